"""What the readers, the converter and the DALI indexer share about the data on disk.

`schema`: split names, shard file names and the Example's keys. `tfrecord`: the TFRecord
framing (CRC-32C, a record walker) and DALI index files. Neither imports TensorFlow.
"""
