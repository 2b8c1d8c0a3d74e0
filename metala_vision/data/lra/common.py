"""Pieces shared by the LRA tasks: in-memory datasets, padding collate functions, cache helpers."""
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

PAD_ID = 0
DEFAULT_CACHE_DIR = Path('~/.cache/metala_vision/lra')


class TokenSequenceDataset(Dataset):
    """Variable-length token sequences held in memory.

    Item i: (input_ids LongTensor[T_i], label int) with input_ids = sequences[i][:max_len] + offset.
    Byte-level text uses offset 1 so that id 0 stays the padding id.
    """

    def __init__(self, sequences, labels, max_len=None, offset=0):
        if len(sequences) != len(labels):
            raise ValueError(f'{len(sequences)} sequences but {len(labels)} labels')
        self.sequences = sequences
        self.labels = np.asarray(labels, dtype=np.int64)
        self.max_len = max_len
        self.offset = offset

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        ids = torch.from_numpy(np.asarray(self.sequences[i][:self.max_len], dtype=np.int64))
        return ids + self.offset if self.offset else ids, int(self.labels[i])


class ImageTokenDataset(Dataset):
    """Grayscale images held in memory as pixel tokens.

    images: uint8 [N, H, W]; item i: (pixels LongTensor[H*W] in 0..255, row-major, label int).
    """

    def __init__(self, images, labels):
        if len(images) != len(labels):
            raise ValueError(f'{len(images)} images but {len(labels)} labels')
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i].reshape(-1).astype(np.int64)), int(self.labels[i])


def _pad(seqs, max_len, pad_id):
    """List of LongTensor[T_i] -> (ids LongTensor[B, T], mask BoolTensor[B, T]); T = max_len or longest."""
    length = max_len if max_len is not None else max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for row, seq in enumerate(seqs):
        n = min(len(seq), length)
        ids[row, :n] = seq[:n]
        mask[row, :n] = True
    return ids, mask


def collate_sequences(batch, max_len=None, pad_id=PAD_ID):
    """[(ids LongTensor[T_i], label)] -> (ids LongTensor[B, T], mask BoolTensor[B, T], labels LongTensor[B]).

    T is the longest T_i, or max_len when given (longer sequences are cut). mask is True on real tokens.
    """
    seqs, labels = zip(*batch)
    ids, mask = _pad(seqs, max_len, pad_id)
    return ids, mask, torch.tensor(labels, dtype=torch.long)


def collate_pairs(batch, max_len=None, pad_id=PAD_ID):
    """[(ids1, ids2, label)] -> (ids1 [B, T1], mask1 [B, T1], ids2 [B, T2], mask2 [B, T2], labels [B]).

    Each side is padded on its own, like collate_sequences.
    """
    seqs1, seqs2, labels = zip(*batch)
    ids1, mask1 = _pad(seqs1, max_len, pad_id)
    ids2, mask2 = _pad(seqs2, max_len, pad_id)
    return ids1, mask1, ids2, mask2, torch.tensor(labels, dtype=torch.long)


def resolve_cache_dir(cache_dir):
    """cache_dir as an absolute Path; None means ~/.cache/metala_vision/lra."""
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser().resolve()


def config_digest(config, **extra):
    """Short hash of a dataclass config plus extra fields, used to name cache entries."""
    blob = json.dumps({**asdict(config), **extra}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def publish(tmp_path, final_path):
    """Moves a freshly written file or folder into place; a copy that another process published first wins."""
    try:
        os.rename(tmp_path, final_path)
    except OSError:
        if not final_path.exists():
            raise
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        else:
            tmp_path.unlink(missing_ok=True)
