"""The ImageNet TFRecord layout of TensorFlow's `build_imagenet_data.py`, in one place.

The converter writes it, the tf.data and DALI readers and the tests read it. Labels are
1-based in the records; the readers subtract 1.
"""

from typing import Sequence

SPLITS = ("train", "validation")

ENCODED = "image/encoded"
LABEL = "image/class/label"
TEXT = "image/class/text"
SYNSET = "image/class/synset"
FILENAME = "image/filename"
HEIGHT = "image/height"
WIDTH = "image/width"
BBOX_PREFIX = "image/object/bbox/"
BBOX = tuple(BBOX_PREFIX + side for side in ("xmin", "ymin", "xmax", "ymax"))
BBOX_LABEL = BBOX_PREFIX + "label"


def check_split(split: str) -> str:
    """`split` if it is a split name, else ValueError naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return split


def shard_name(split: str, index: int, num_shards: int) -> str:
    """`train-00003-of-01024`: the name of shard `index` of `num_shards`."""
    return f"{check_split(split)}-{index:05d}-of-{num_shards:05d}"


def is_split_file(name: str, split: str = None) -> bool:
    """Whether a file name belongs to `split` (None: to any split)."""
    splits = SPLITS if split is None else (check_split(split),)
    return name.startswith(tuple(f"{s}-" for s in splits))


def make_example(
    encoded: bytes,
    height: int,
    width: int,
    filename: str,
    synset: str,
    label: int,
    text: str,
    boxes: Sequence[Sequence[float]] = (),
):
    """A `tf.train.Example` of one image as `build_imagenet_data.py` writes it.

    Args:
      encoded: JPEG bytes. height, width: its size. filename: the source file's name.
      synset: the class folder (wnid). label: the 1-based class index. text: class name.
      boxes: (xmin, ymin, xmax, ymax) tuples, relative to the image size.
    """
    import tensorflow as tf  # the indexer and the parser use this module without TF

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def strings(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def names(value):  # a file or folder name that is not UTF-8 keeps its bytes
        return strings(value.encode("utf-8", "surrogateescape"))

    sides = [list(c) for c in zip(*boxes)] if boxes else [[], [], [], []]
    feature = {
        HEIGHT: ints([height]),
        WIDTH: ints([width]),
        "image/colorspace": strings(b"RGB"),
        "image/channels": ints([3]),
        LABEL: ints([label]),
        SYNSET: names(synset),
        TEXT: names(text),
        **{key: floats(values) for key, values in zip(BBOX, sides)},
        BBOX_LABEL: ints([label] * len(sides[0])),
        "image/format": strings(b"JPEG"),
        FILENAME: names(filename),
        ENCODED: strings(encoded),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))
