"""Built-in image-classification set: scikit-learn's handwritten digits written out as an ImageFolder.

The 1,797 8x8 digit scans ship inside the scikit-learn wheel, so nothing is downloaded. They are upsampled to
`size` x `size` RGB PNGs under `root/train/<digit>/` and `root/val/<digit>/`, split per class with a fixed seed.

    python -m metala_vision.data.synthetic /tmp/digits32
"""
import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

_MARKER = 'digits.json'  # written last: its presence (with matching parameters) means the folder is complete


def write_digits(root, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Writes (or reuses) the digits ImageFolder at `root` and returns its path."""
    root = Path(root)
    params = dict(size=size, val_fraction=val_fraction, seed=seed)
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()).get('params') == params:
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise FileExistsError(f'{root} exists and is not a digits folder written by write_digits; choose another path')

    from sklearn.datasets import load_digits  # imported here: slow, and not needed to reuse a written folder

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # scans hold 0..16
    rng = np.random.RandomState(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{root.name}-', dir=root.parent))
    counts = {'train': 0, 'val': 0}
    for label in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = int(round(len(members) * val_fraction))
        for split, indices in (('val', members[:n_val]), ('train', members[n_val:])):
            class_dir = staging / split / str(label)
            class_dir.mkdir(parents=True)
            for index in indices:
                image = Image.fromarray(pixels[index]).resize((size, size), Image.BICUBIC)
                image.convert('RGB').save(class_dir / f'{index:04d}.png')
            counts[split] += len(indices)
    (staging / _MARKER).write_text(json.dumps(dict(params=params, counts=counts), indent=1))
    if marker.is_file() and json.loads(marker.read_text()).get('params') == params:
        shutil.rmtree(staging)  # another process finished first
        return root
    if root.exists():  # written with other parameters
        shutil.rmtree(root)
    staging.rename(root)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', help='output folder')
    parser.add_argument('--size', type=int, default=32, help='image side in pixels (default 32)')
    parser.add_argument('--val-fraction', type=float, default=0.2, help='per-class validation share (default 0.2)')
    parser.add_argument('--seed', type=int, default=0, help='split seed (default 0)')
    args = parser.parse_args(argv)
    root = write_digits(args.root, args.size, args.val_fraction, args.seed)
    print(json.loads((root / _MARKER).read_text())['counts'], '->', root)


if __name__ == '__main__':
    main()
