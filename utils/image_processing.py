"""Image decoding and augmentation for ImageNet-style JPEG records (the original's recipe).

Every function here is made of TensorFlow ops only, so it runs inside `tf.data` maps.
Outputs are float32 RGB in 0..255, NHWC; the model normalises its input itself.
"""

import tensorflow as tf

# Training crop ranges of the original recipe.
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
AREA_RANGE = (0.08, 1.0)
MAX_ATTEMPTS = 100

# Evaluation resizes the shorter side to 256 for a 224 crop, in proportion for other sizes.
EVAL_RESIZE_RATIO = 256.0 / 224.0


def eval_resize_size(image_size):
    """Length of the shorter side before the central crop: round(image_size * 256 / 224)."""
    return int(image_size * EVAL_RESIZE_RATIO + 0.5)


def preprocess_for_train(encoded, boxes, image_size, seed):
    """Random crop guided by `boxes`, random horizontal flip, bilinear resize.

    encoded: scalar string, JPEG bytes.
    boxes: float32 [num_boxes, 4] as (ymin, xmin, ymax, xmax), relative; may be empty,
        then the whole image is the object the crop must cover.
    seed: int32/int64 [2], a stateless seed; the same seed gives the same crop and flip.
    Returns float32 [image_size, image_size, 3].
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(encoded),
        bounding_boxes=tf.expand_dims(_valid_boxes(boxes), 0),
        seed=crop_seed,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    crop_window = tf.stack([begin[0], begin[1], size[0], size[1]])
    # Decoding only the crop window skips most of the IDCT work for small crops.
    image = tf.image.decode_and_crop_jpeg(encoded, crop_window, channels=3)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.ensure_shape(image, [image_size, image_size, 3])


def preprocess_for_eval(encoded, image_size):
    """Decode JPEG bytes, resize the shorter side, take the central square crop."""
    return resize_and_central_crop(tf.io.decode_jpeg(encoded, channels=3), image_size)


def resize_and_central_crop(image, image_size):
    """Bilinear resize keeping the aspect ratio so the shorter side is
    `eval_resize_size(image_size)`, then the central `image_size` square.

    image: uint8 or float [height, width, 3]. Returns float32 [image_size, image_size, 3].
    """
    shorter = eval_resize_size(image_size)
    shape = tf.shape(image, out_type=tf.int64)
    height, width = shape[0], shape[1]
    # Integer arithmetic: the longer side is round-half-up(longer * shorter / shortest).
    new_height = tf.where(
        height <= width,
        tf.constant(shorter, tf.int64),
        (2 * height * shorter + width) // (2 * width),
    )
    new_width = tf.where(
        height <= width,
        (2 * width * shorter + height) // (2 * height),
        tf.constant(shorter, tf.int64),
    )
    new_size = tf.cast(tf.stack([new_height, new_width]), tf.int32)
    image = tf.image.resize(image, new_size, method="bilinear")
    top = (new_height - image_size) // 2
    left = (new_width - image_size) // 2
    image = image[top : top + image_size, left : left + image_size]
    return tf.ensure_shape(tf.cast(image, tf.float32), [image_size, image_size, 3])


def _valid_boxes(boxes):
    """Clip to [0, 1] and order each box's corners: sample_distorted_bounding_box rejects
    boxes with min > max, and a sloppy box file should not cost the image."""
    boxes = tf.clip_by_value(tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]), 0.0, 1.0)
    low = tf.minimum(boxes[:, :2], boxes[:, 2:])
    high = tf.maximum(boxes[:, :2], boxes[:, 2:])
    return tf.concat([low, high], axis=1)
