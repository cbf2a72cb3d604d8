"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no download), upscaled: as
arrays, and as an image folder that timm's ImageFolder reader and train.py take:
root/{train,validation}/<class>/*.png."""
import os

import numpy as np

from el_plugins.files import write_text


def upscale_digit(image, size: int = 32) -> np.ndarray:
    """One digit as load_digits gives it (8x8, values 0-16) as a size x size uint8 grayscale array (bilinear)."""
    from PIL import Image

    pixels = (image * (255.0 / 16.0)).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


def load_upscaled_digits(size: int = 32):
    """(images, labels): all 1,797 digits upscaled, uint8 of shape (1797, size, size), and their classes 0-9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.stack([upscale_digit(image, size) for image in digits.images]), digits.target


def write_digits_image_folder(root: str, size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> dict:
    """Upscale the digits to size x size RGB PNGs; returns {'train': n, 'validation': n, 'classes': 10}.

    The split is stratified and fixed by ``seed``; files are written once (an existing complete folder is kept).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.RandomState(seed)
    counts = {"train": 0, "validation": 0}
    done_marker = os.path.join(root, ".complete")
    write = not os.path.exists(done_marker)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        for split, part in (("validation", idx[:n_val]), ("train", idx[n_val:])):
            counts[split] += len(part)
            if not write:
                continue
            folder = os.path.join(root, split, str(label))
            os.makedirs(folder, exist_ok=True)
            for i in part:
                img = Image.fromarray(upscale_digit(digits.images[i], size)).convert("RGB")
                img.save(os.path.join(folder, f"{i:04d}.png"))  # the folder counts once .complete is written
    if write:
        write_text(done_marker, "")
    return dict(counts, classes=10)
