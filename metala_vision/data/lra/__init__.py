"""Long Range Arena (Tay et al., 2021) data: ListOps and Pathfinder generators, readers of the published files.

Entry point: ``build_lra_datasets(task, data_dir=None, cache_dir=None, seed=0)`` -> (train, val, test), with
``LRA_TASKS[task]`` (classes, vocabulary, length) and ``lra_collate_fn(task)`` to batch them.
"""
from .common import ImageTokenDataset, TokenSequenceDataset, collate_pairs, collate_sequences
from .listops import (ListOpsConfig, ListOpsDataset, decode_listops, encode_listops, generate_listops,
                      generate_listops_splits, read_listops_tsv, write_listops_tsv)
from .loaders import (AANRetrievalDataset, PathfinderFolderDataset, index_pathfinder, load_pathfinder_folder,
                      read_cifar10, read_imdb, rgb_to_grayscale)
from .pathfinder import (PathfinderConfig, generate_pathfinder, generate_pathfinder_file, load_pathfinder_file,
                         pathfinder_config)
from .tasks import LRA_TASKS, LRATaskInfo, build_lra_datasets, lra_collate_fn

__all__ = [
    'LRA_TASKS', 'LRATaskInfo', 'build_lra_datasets', 'lra_collate_fn',
    'collate_sequences', 'collate_pairs', 'TokenSequenceDataset', 'ImageTokenDataset',
    'ListOpsConfig', 'ListOpsDataset', 'encode_listops', 'decode_listops', 'generate_listops',
    'generate_listops_splits', 'read_listops_tsv', 'write_listops_tsv',
    'PathfinderConfig', 'pathfinder_config', 'generate_pathfinder', 'generate_pathfinder_file',
    'load_pathfinder_file',
    'AANRetrievalDataset', 'PathfinderFolderDataset', 'index_pathfinder', 'load_pathfinder_folder',
    'read_cifar10', 'read_imdb', 'rgb_to_grayscale',
]
