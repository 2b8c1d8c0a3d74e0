"""Readers of the Long Range Arena data in its published layouts (nothing is downloaded).

- Text: IMDB reviews, ``aclImdb/{train,test}/{pos,neg}/*.txt``, extracted or inside ``aclImdb_v1.tar.gz``.
- Retrieval: AAN citation pairs, ``lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv``.
- Image: CIFAR-10, ``cifar-10-batches-py/{data_batch_1..5,test_batch}``, extracted or inside
  ``cifar-10-python.tar.gz``.
- Pathfinder: ``lra_release/pathfinder{32,128}/curv_*/metadata/*.npy`` (text lines, despite the suffix) and
  ``imgs/<n>/sample_<i>.png``.
"""
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .pathfinder import split_bounds

BYTE_OFFSET = 1  # byte b is token b + 1, so that 0 stays the padding id
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET
IMDB_ARCHIVE = 'aclImdb_v1.tar.gz'
CIFAR_ARCHIVE = 'cifar-10-python.tar.gz'
CIFAR_DIR = 'cifar-10-batches-py'
AAN_FILES = {'train': 'new_aan_pairs.train.tsv', 'val': 'new_aan_pairs.eval.tsv', 'test': 'new_aan_pairs.test.tsv'}
PATHFINDER_DIRS = {'easy': 'curv_baseline', 'intermediate': 'curv_contour_length_9',
                   'hard': 'curv_contour_length_14'}
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale


def _find_source(root, folder, archive, what):
    """('dir', path) or ('tar', path) for a data set kept as `folder` or as `archive` under root (or root itself)."""
    root = Path(root).expanduser()
    if root.is_file() and root.name == archive:
        return 'tar', root
    if root.name == folder and root.is_dir():
        return 'dir', root
    if (root / folder).is_dir():
        return 'dir', root / folder
    if (root / archive).is_file():
        return 'tar', root / archive
    raise FileNotFoundError(f'{what} not found under {root}: expected {root / folder}/ or {root / archive}')


# ----------------------------------------------------------------------------------------------------------- text

_IMDB_MEMBER = re.compile(r'(?:^|/)aclImdb/(train|test)/(neg|pos)/([^/]+\.txt)$')


def read_imdb(root, max_len=None):
    """IMDB reviews -> {'train': (texts, labels), 'test': (texts, labels)}, label 1 = positive.

    texts: list of uint8 arrays (the review's UTF-8 bytes, cut to max_len); labels: int64 [N]. Reviews are in
    (negatives, positives) order, by file name. root: aclImdb/, a folder holding it or aclImdb_v1.tar.gz, or
    the archive itself.
    """
    kind, source = _find_source(root, 'aclImdb', IMDB_ARCHIVE, 'IMDB reviews')
    found = {}  # (split, label) -> [(file name, bytes)]
    if kind == 'dir':
        for split in ('train', 'test'):
            for label, name in enumerate(('neg', 'pos')):
                folder = source / split / name
                if not folder.is_dir():
                    raise FileNotFoundError(f'IMDB folder missing: {folder} '
                                            f'(expected aclImdb/{{train,test}}/{{pos,neg}}/*.txt)')
                found[split, label] = [(f.name, f.read_bytes()) for f in folder.glob('*.txt')]
    else:
        with tarfile.open(source, 'r:gz') as archive:
            for member in archive:
                match = _IMDB_MEMBER.search(member.name)
                if match and member.isfile():
                    key = (match[1], ('neg', 'pos').index(match[2]))
                    found.setdefault(key, []).append((match[3], archive.extractfile(member).read()))
    out = {}
    for split in ('train', 'test'):
        texts, labels = [], []
        for label in (0, 1):
            reviews = sorted(found.get((split, label), []))
            if not reviews:
                raise ValueError(f'{source}: no reviews in aclImdb/{split}/{("neg", "pos")[label]}')
            texts += [np.frombuffer(text[:max_len], dtype=np.uint8) for _, text in reviews]
            labels += [label] * len(reviews)
        out[split] = texts, np.asarray(labels, dtype=np.int64)
    return out


# ------------------------------------------------------------------------------------------------------ retrieval

class AANRetrievalDataset(Dataset):
    """AAN citation pairs of one LRA TSV (label, id1, id2, text1, text2; tab-separated, no header), read lazily.

    Item: (ids1 LongTensor[T1], ids2 LongTensor[T2], label) with byte tokens (UTF-8 byte + 1), T <= max_len.
    Only line offsets and labels are kept in memory.
    """

    def __init__(self, path, max_len=4000):
        self.path = Path(path)
        self.max_len = max_len
        if not self.path.is_file():
            raise FileNotFoundError(f'AAN file not found: {self.path} (expected lra_release/tsv_data/'
                                    f'new_aan_pairs.{{train,eval,test}}.tsv)')
        offsets, labels, position = [], [], 0
        with open(self.path, 'rb') as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    fields = line.rstrip(b'\r\n').split(b'\t', 1)
                    if line.count(b'\t') != 4 or self._label(fields[0]) is None:
                        raise ValueError(f'{self.path}, line {line_no}: expected 5 tab-separated fields '
                                         f'(label 0/1, id1, id2, text1, text2), found {line[:80]!r}...')
                    offsets.append(position)
                    labels.append(self._label(fields[0]))
                position += len(line)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)

    @staticmethod
    def _label(field):
        try:
            value = float(field)
        except ValueError:
            return None
        return int(value) if value in (0.0, 1.0) else None

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        with open(self.path, 'rb') as f:
            f.seek(self.offsets[i])
            _, _, _, text1, text2 = f.readline().rstrip(b'\r\n').split(b'\t')
        ids1, ids2 = (torch.from_numpy(np.frombuffer(t[:self.max_len], dtype=np.uint8).astype(np.int64) + BYTE_OFFSET)
                      for t in (text1, text2))
        return ids1, ids2, int(self.labels[i])


def aan_split_paths(root):
    """Paths of the train/val/test AAN TSVs under an lra_release folder."""
    return {split: Path(root) / 'tsv_data' / name for split, name in AAN_FILES.items()}


# ---------------------------------------------------------------------------------------------------------- image

def rgb_to_grayscale(rgb):
    """uint8 [..., 3] -> uint8 [...], as tf.image.rgb_to_grayscale: weights 0.2989/0.5870/0.1140 on [0, 1]
    floats, then back to uint8 by truncating gray * 255.5."""
    gray = (rgb.astype(np.float32) / np.float32(255)) @ GRAY_WEIGHTS
    return (gray * np.float32(255.5)).astype(np.uint8)


def _cifar_batch(blob, name):
    batch = pickle.loads(blob, encoding='bytes')
    data, labels = batch.get(b'data'), batch.get(b'labels')
    if data is None or labels is None or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f'{name}: not a CIFAR-10 python batch (expected b"data" uint8 [N, 3072] and b"labels")')
    rgb = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes R, G, B -> [N, 32, 32, 3]
    return rgb_to_grayscale(rgb), np.asarray(labels, dtype=np.int64)


def read_cifar10(root):
    """CIFAR-10 -> {'train': (images uint8 [50000, 32, 32], labels int64), 'test': (images [10000, ...], labels)}.

    Images are converted to grayscale as LRA does. root: cifar-10-batches-py/, a folder holding it or
    cifar-10-python.tar.gz, or the archive itself.
    """
    kind, source = _find_source(root, CIFAR_DIR, CIFAR_ARCHIVE, 'CIFAR-10')
    names = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
    blobs = {}
    if kind == 'dir':
        for name in sum(names.values(), []):
            if not (source / name).is_file():
                raise FileNotFoundError(f'CIFAR-10 batch missing: {source / name}')
            blobs[name] = (source / name).read_bytes()
    else:
        with tarfile.open(source, 'r:gz') as archive:
            for name in sum(names.values(), []):
                try:
                    blobs[name] = archive.extractfile(f'{CIFAR_DIR}/{name}').read()
                except KeyError:
                    raise FileNotFoundError(f'{source}: member {CIFAR_DIR}/{name} missing') from None
    out = {}
    for split, batch_names in names.items():
        parts = [_cifar_batch(blobs[name], source / name) for name in batch_names]
        out[split] = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return out


# ----------------------------------------------------------------------------------------------------- pathfinder

def _metadata_order(path):
    return (0, int(path.stem), '') if path.stem.isdigit() else (1, 0, path.stem)


def index_pathfinder(root):
    """Image paths and labels (int64 [N]) of an official Pathfinder folder, e.g. pathfinder32/curv_baseline.

    Metadata files are read in numeric order, their lines in order; each line's fields are
    [0] folder under root, [1] file name, [2] index, [3] label, then generation settings. Empty image files
    are left out, as LRA does.
    """
    root = Path(root)
    meta_files = sorted((root / 'metadata').glob('*.npy'), key=_metadata_order)
    if not meta_files:
        raise FileNotFoundError(f'no Pathfinder metadata under {root / "metadata"} (expected metadata/<n>.npy '
                                f'text files next to imgs/)')
    paths, labels = [], []
    for meta in meta_files:
        for line_no, line in enumerate(meta.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4 or fields[3] not in ('0', '1'):
                raise ValueError(f'{meta}, line {line_no}: expected "<imgs folder> <file> <index> <label 0/1> ...",'
                                 f' found {line!r}')
            path = root / fields[0] / fields[1]
            try:
                if os.stat(path).st_size == 0:
                    continue
            except FileNotFoundError:
                raise FileNotFoundError(f'Pathfinder image listed in {meta}, line {line_no}, not found: '
                                        f'{path}') from None
            paths.append(path)
            labels.append(int(fields[3]))
    return paths, np.asarray(labels, dtype=np.int64)


class PathfinderFolderDataset(Dataset):
    """Official Pathfinder PNGs, decoded lazily; item: (pixels LongTensor[size*size] in 0..255, label)."""

    def __init__(self, paths, labels, size):
        self.paths, self.labels, self.size = paths, np.asarray(labels, dtype=np.int64), size

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            pixels = np.asarray(image if image.mode == 'L' else image.convert('L'))
        if pixels.shape != (self.size, self.size):
            raise ValueError(f'{self.paths[i]}: expected a {self.size}x{self.size} image, found {pixels.shape}')
        return torch.from_numpy(pixels.reshape(-1).astype(np.int64)), int(self.labels[i])


def load_pathfinder_folder(root, size):
    """(train, val, test) PathfinderFolderDatasets of one official folder, split 80/10/10 in order as LRA does."""
    paths, labels = index_pathfinder(root)
    train_end, val_end = split_bounds(len(labels))
    return tuple(PathfinderFolderDataset(paths[lo:hi], labels[lo:hi], size)
                 for lo, hi in ((0, train_end), (train_end, val_end), (val_end, len(labels))))
