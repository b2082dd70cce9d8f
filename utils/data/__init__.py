"""What the readers, the converter and the DALI indexer share about the data on disk.

`schema`: split names, shard file names and the Example's keys. `tfrecord`: the TFRecord
framing (CRC-32C, a record walker) and DALI index files. `files`: listing, shard sets and
cached record counts. None of those imports TensorFlow; `reader` (tf.data reading with
skip and loss counting) does.
"""
