"""The six Long Range Arena tasks: metadata and one entry point that builds their datasets."""
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from . import listops
from .common import PAD_ID, ImageTokenDataset, TokenSequenceDataset, collate_pairs, collate_sequences
from .loaders import (BYTE_OFFSET, BYTE_VOCAB_SIZE, PATHFINDER_DIRS, AANRetrievalDataset, aan_split_paths,
                      load_pathfinder_folder, read_cifar10, read_imdb)
from .pathfinder import generate_pathfinder_file, load_pathfinder_file, pathfinder_config


@dataclass(frozen=True)
class LRATaskInfo:
    """What a model needs to know about an LRA task."""
    name: str
    num_classes: int
    vocab_size: int                  # token ids lie in [0, vocab_size)
    max_len: int                     # tokens per sequence (per side for retrieval)
    paired: bool = False             # items hold two sequences (retrieval): use collate_pairs
    image_size: tuple = None         # (H, W) of pixel-token tasks, whose sequences have a fixed length


LRA_TASKS = {
    'listops': LRATaskInfo('listops', num_classes=10, vocab_size=listops.VOCAB_SIZE, max_len=listops.MAX_LEN),
    'text': LRATaskInfo('text', num_classes=2, vocab_size=BYTE_VOCAB_SIZE, max_len=4096),
    'retrieval': LRATaskInfo('retrieval', num_classes=2, vocab_size=BYTE_VOCAB_SIZE, max_len=4000, paired=True),
    'image': LRATaskInfo('image', num_classes=10, vocab_size=256, max_len=32 * 32, image_size=(32, 32)),
    'pathfinder': LRATaskInfo('pathfinder', num_classes=2, vocab_size=256, max_len=32 * 32, image_size=(32, 32)),
    'pathx': LRATaskInfo('pathx', num_classes=2, vocab_size=256, max_len=128 * 128, image_size=(128, 128)),
}


def lra_collate_fn(task, max_len=None):
    """Collate function of a task: pads each batch to its longest sequence, or, given max_len, to max_len tokens
    (cutting longer sequences): the same shape every batch.

    Batches: (ids [B, T], mask [B, T], labels [B]); for retrieval (ids1, mask1, ids2, mask2, labels).
    """
    info = _task_info(task)
    collate = collate_pairs if info.paired else collate_sequences
    return partial(collate, max_len=max_len, pad_id=PAD_ID)


def _task_info(task):
    if task not in LRA_TASKS:
        raise ValueError(f'unknown LRA task {task!r}; choose one of {sorted(LRA_TASKS)}')
    return LRA_TASKS[task]


def build_lra_datasets(task, data_dir=None, cache_dir=None, seed=0, difficulty='hard', num_examples=None,
                       num_workers=None):
    """(train, val, test) torch Datasets of one LRA task; see LRA_TASKS[task] for its sizes.

    data_dir: the folder holding the LRA data in its published layouts: lra_release's listops-1000/,
    tsv_data/ (retrieval), pathfinder32/ and pathfinder128/ (pathx), plus aclImdb/ or aclImdb_v1.tar.gz (text)
    and cifar-10-batches-py/ or cifar-10-python.tar.gz (image). Without it, listops, pathfinder and pathx are
    generated (deterministic in seed, cached under cache_dir, default ~/.cache/metala_vision/lra); text,
    retrieval and image need data_dir, as nothing is downloaded.

    difficulty: Pathfinder/Path-X contour length, easy/intermediate/hard (LRA uses hard). num_examples: size of
    a generated set (default: as LRA, 100,000 for listops, 200,000 images for pathfinder/pathx); listops is
    split 96/2/2 %, pathfinder 80/10/10 %. text uses the IMDB test set for both val and test, as LRA does;
    image holds out the last 10% of the CIFAR-10 training batches for val.
    """
    info = _task_info(task)
    if data_dir is None:
        if task == 'listops':
            return _generated_listops(cache_dir, seed, num_examples, num_workers)
        if task in ('pathfinder', 'pathx'):
            config = pathfinder_config(info.image_size[0], difficulty)
            path = generate_pathfinder_file(cache_dir, config, seed=seed, num_images=num_examples or 200_000,
                                            num_workers=num_workers)
            return load_pathfinder_file(path)
        raise ValueError(f'LRA task {task!r} needs its data: pass data_dir (see build_lra_datasets); '
                         f'it is not generated and nothing is downloaded')
    data_dir = Path(data_dir).expanduser()
    if task == 'listops':
        paths = listops.listops_split_paths(data_dir / 'listops-1000')
        return tuple(listops.ListOpsDataset(paths[split]) for split in ('train', 'val', 'test'))
    if task == 'retrieval':
        paths = aan_split_paths(data_dir)
        return tuple(AANRetrievalDataset(paths[split], info.max_len) for split in ('train', 'val', 'test'))
    if task == 'text':
        splits = read_imdb(data_dir, max_len=info.max_len)
        train, test = (TokenSequenceDataset(*splits[s], max_len=info.max_len, offset=BYTE_OFFSET)
                       for s in ('train', 'test'))
        return train, test, test
    if task == 'image':
        splits = read_cifar10(data_dir)
        images, labels = splits['train']
        cut = len(labels) * 9 // 10
        return (ImageTokenDataset(images[:cut], labels[:cut]), ImageTokenDataset(images[cut:], labels[cut:]),
                ImageTokenDataset(*splits['test']))
    if difficulty not in PATHFINDER_DIRS:
        raise ValueError(f'difficulty must be one of {sorted(PATHFINDER_DIRS)}, got {difficulty!r}')
    size = info.image_size[0]
    return load_pathfinder_folder(data_dir / f'pathfinder{size}' / PATHFINDER_DIRS[difficulty], size)


def _generated_listops(cache_dir, seed, num_examples, num_workers):
    config = listops.ListOpsConfig()
    if num_examples is not None:
        if num_examples < 3:
            raise ValueError(f'num_examples must be >= 3 (train, val and test each get one), got {num_examples}')
        num_val = num_test = max(1, round(0.02 * num_examples))
        config = replace(config, num_train=num_examples - num_val - num_test, num_val=num_val, num_test=num_test)
    root = listops.generate_listops_splits(cache_dir, seed=seed, config=config, num_workers=num_workers)
    paths = listops.listops_split_paths(root)
    return tuple(listops.ListOpsDataset(paths[split]) for split in ('train', 'val', 'test'))
