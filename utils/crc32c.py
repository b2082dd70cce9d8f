"""CRC-32C as TFRecord framing uses it, in plain Python (no TensorFlow import).

Only record headers (8 bytes) are checked with it, so speed does not matter.
"""


def _make_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _make_table()


def masked_crc32c(data):
    """The masked CRC-32C that TFRecord stores after each length and payload."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
