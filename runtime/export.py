"""SavedModel export with the original's signature: signatures `serving_default` and
`predict`, input key `input` (raw float32 0..255 pixels), outputs `classes` (int32 argmax)
and `probabilities` (float32 softmax).

A model trained on DALI batches (normalised by DALI) has no normalisation of its own;
`normalize=True` puts it back in front, so every export takes raw 0..255 RGB pixels.

The export is written beside `export_dir` under a temporary name and renamed into place,
so an interrupted export never leaves a half-written model where a server would load it.
"""

import os
import shutil
import tempfile

import tensorflow as tf

from model.resnet import normalize_images


class _Serving(tf.Module):
    def __init__(self, model, image_size, normalize):
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.serve = tf.function(
            self._serve,
            input_signature=[
                # The spec's name is the signature's input key: `input`, as the original's.
                tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="input")
            ],
        )

    def _serve(self, input_tensor):
        if self.normalize:
            input_tensor = normalize_images(input_tensor)
        logits = tf.cast(self.model(input_tensor, training=False), tf.float32)
        return {
            "classes": tf.argmax(logits, axis=1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=1),
        }


def export_saved_model(model, export_dir, image_size=224, normalize=False):
    """Write `model` as a SavedModel to `export_dir`; `normalize`: the model expects
    normalised images (built with normalize_input=False), so the export normalises."""
    export_dir = os.path.abspath(export_dir)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(export_dir)}.tmp-")
    try:
        module = _Serving(model, image_size, normalize)
        tf.saved_model.save(
            module, staging, signatures={"serving_default": module.serve, "predict": module.serve}
        )
        if os.path.exists(export_dir):
            retired = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(export_dir)}.old-")
            os.rename(export_dir, os.path.join(retired, "model"))
            os.rename(staging, export_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return export_dir
