"""SavedModel export with the original's signature: signatures `serving_default` and
`predict`, input key `input` (raw float32 0..255 pixels), outputs `classes` (int32 argmax)
and `probabilities` (float32 softmax).

A model trained on DALI batches (normalised by DALI) has no normalisation of its own;
`normalize=True` puts it back in front, so every export takes raw 0..255 RGB pixels.

Exports go to `export_dir/<version>` (TF Serving's layout, version = one more than the
largest there), staged in a hidden folder of `export_dir` and renamed into place, so an
interrupted export never leaves a half-written model where a server would load it.
"""

import os
import shutil
import socket
import tempfile

import tensorflow as tf

from model.resnet import normalize_images
from utils.core import fileio
from utils.core.errors import UserError
from utils.core.tf_compat import keras

STAGING_PREFIX = ".export-tmp-"  # + host-pid-random: runtime.outputs cleans dead ones


class _Serving(tf.Module):
    def __init__(self, model, image_size, normalize):
        super().__init__()
        # The model's variables, not the Keras model: saving a Keras model also traces the
        # call of every one of its layers (4-6x the time of the export itself, measured on
        # resnet50); the signatures need only the variables their one trace captures.
        self.model_variables = list(model.variables)
        self._call_model = lambda images: model(images, training=False)  # not tracked
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
        logits = tf.cast(self._call_model(input_tensor), tf.float32)
        return {
            "classes": tf.argmax(logits, axis=1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=1),
        }


def next_version(export_dir: str) -> int:
    """The version to write in `export_dir`: one more than its largest numeric subfolder
    (1 for a new or empty folder). Refuses, with one line, a file or a folder that holds
    anything but version folders and this program's hidden staging folders.

    Args:
      export_dir: the --export_dir path.
    """
    if not os.path.exists(export_dir):
        return 1
    if not os.path.isdir(export_dir):
        raise UserError(f"--export_dir {export_dir} is a file: pass a folder for SavedModels")
    versions, others = [], []
    for name in sorted(os.listdir(export_dir)):
        path = os.path.join(export_dir, name)
        if name.isdigit() and os.path.isdir(path):
            versions.append(int(name))
        elif not (name.startswith(STAGING_PREFIX) or name.startswith(".write-test-")):
            others.append(name)
    if others:
        raise UserError(
            f"--export_dir {export_dir} holds other files ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}), not only SavedModel versions 1, 2, ...: "
            "pass a new or empty folder (never --model_dir)"
        )
    return max(versions, default=0) + 1


def export_saved_model(
    model: keras.Model, export_dir: str, image_size: int = 224, normalize: bool = False
) -> str:
    """Write `model` as a SavedModel to `export_dir/<version>` (TF Serving's layout) and
    return that path; nothing already in `export_dir` is changed or removed.

    Args:
      model: the Keras model.
      export_dir: the folder of versions (created if missing).
      image_size: the input height and width of the serving signature.
      normalize: the model expects normalised images (built with normalize_input=False),
        so the export normalises.
    """
    export_dir = os.path.abspath(export_dir)
    version = next_version(export_dir)
    os.makedirs(export_dir, mode=fileio.default_mode(directory=True), exist_ok=True)
    staging = tempfile.mkdtemp(
        dir=export_dir, prefix=f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"
    )
    try:
        os.chmod(staging, fileio.default_mode(directory=True))
        module = _Serving(model, image_size, normalize)
        tf.saved_model.save(
            module, staging, signatures={"serving_default": module.serve, "predict": module.serve}
        )
        target = os.path.join(export_dir, str(version))
        while os.path.exists(target):  # another export took this version meanwhile
            version += 1
            target = os.path.join(export_dir, str(version))
        os.rename(staging, target)
    except OSError as error:
        raise UserError(
            f"cannot export to {export_dir}: {error.strerror or error}; earlier versions "
            "there are untouched"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
