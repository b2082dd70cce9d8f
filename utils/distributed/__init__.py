"""Multi-process engines other than Horovod (tf.distribute collectives) and their start-up."""
