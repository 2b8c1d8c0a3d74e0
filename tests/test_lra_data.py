"""Long Range Arena data: generators checked by independent references, readers on small files in the official
layouts, batching, and the errors raised for missing or malformed data."""
import pickle
import tarfile
from collections import deque

import numpy as np
import pytest
import torch
from PIL import Image

from metala_vision.data.lra import (LRA_TASKS, AANRetrievalDataset, ListOpsConfig, ListOpsDataset,
                                    build_lra_datasets, decode_listops, encode_listops, generate_listops,
                                    generate_listops_splits, generate_pathfinder, lra_collate_fn,
                                    pathfinder_config, read_listops_tsv, rgb_to_grayscale, write_listops_tsv)
from metala_vision.data.lra import listops as listops_module


# ------------------------------------------------------------------------------------------ references for tests

def eval_listops(expression):
    """Value of a ListOps expression (official form with parentheses, or plain), by a stack machine."""
    ops = {'MIN': min, 'MAX': max, 'MED': lambda a: int(np.median(a)), 'SM': lambda a: sum(a) % 10}
    frames = [[]]
    for tok in expression.split():
        if tok in '()':
            continue
        if tok.startswith('['):
            frames.append([ops[tok[1:]]])
        elif tok == ']':
            op, *args = frames.pop()
            frames[-1].append(op(args))
        else:
            frames[-1].append(int(tok))
    assert len(frames) == 1 and len(frames[0]) == 1, f'unbalanced expression {expression[:60]!r}'
    return frames[0][0]


def parse_tree(expression):
    """Plain or official expression -> nested (op, [children]) tuples, digits as ints."""
    stack = [('root', [])]
    for tok in expression.split():
        if tok in '()':
            continue
        if tok.startswith('['):
            stack.append((tok, []))
        elif tok == ']':
            node = stack.pop()
            stack[-1][1].append(node)
        else:
            stack[-1][1].append(int(tok))
    return stack[0][1][0]


def official_string(tree):
    """The official LRA serialisation: (((op a1) a2) ... END), each pair written '( x y )'."""
    if isinstance(tree, int):
        return str(tree)
    op, children = tree
    text = op
    for item in [official_string(c) for c in children] + [']']:
        text = f'( {text} {item} )'
    return text


def tree_stats(tree, depth=1):
    """(deepest digit depth, fewest args, most args) of a parsed tree."""
    if isinstance(tree, int):
        return depth, 99, 0
    stats = [tree_stats(c, depth + 1) for c in tree[1]]
    return (max(s[0] for s in stats), min([len(tree[1])] + [s[1] for s in stats]),
            max([len(tree[1])] + [s[2] for s in stats]))


def components(mask, reach=1):
    """Component labels of a bool image (0 = background), pixels within `reach` rows and columns of each other
    being connected (reach 1: 8-connectivity), by breadth-first search."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    h, w = mask.shape
    count = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        count += 1
        labels[y0, x0] = count
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for dy in range(-reach, reach + 1):
                for dx in range(-reach, reach + 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < h and 0 <= u < w and mask[v, u] and not labels[v, u]:
                        labels[v, u] = count
                        queue.append((v, u))
    return labels


# -------------------------------------------------------------------------------------------------------- ListOps

@pytest.mark.parametrize('expression, value', [
    ('[MAX 2 9 [MIN 4 7 ] 0 ]', 9), ('[SM 3 9 ]', 2), ('[MED 1 5 3 ]', 3),
    ('[MED 1 5 3 2 ]', 2),  # int(np.median([1, 5, 3, 2])) = int(2.5)
    ('[MED 9 8 ]', 8), ('[MIN [SM 5 5 ] 3 ]', 0), ('( ( ( [MAX 2 ) 9 ) ] )', 9),
])
def test_listops_reference_values(expression, value):
    assert eval_listops(expression) == value


def test_listops_generator_operator_semantics():
    # the generator's own evaluation, on the cases where MED and SM are easy to get wrong
    assert listops_module._apply(2, [1, 5, 3, 2]) == 2
    assert listops_module._apply(2, [9, 8]) == 8
    assert listops_module._apply(2, [4, 1, 7]) == 4
    assert listops_module._apply(3, [9, 9, 5]) == 3


def test_listops_generated_examples_follow_lra_rules():
    examples = generate_listops(200, seed=11, num_workers=1)
    sources = [s for s, _ in examples]
    assert len(set(sources)) == 200
    labels = [label for _, label in examples]
    assert len(set(labels)) == 10
    for source, label in examples:
        assert eval_listops(source) == label
        tree = parse_tree(source)
        assert official_string(tree) == source  # exactly the official '( ( [OP a ) b ) ...' form
        num_tokens = sum(tok not in '()' for tok in source.split())
        assert 500 < num_tokens < 2000
        deepest, fewest, most = tree_stats(tree)
        assert deepest <= 10 and fewest >= 2 and most <= 10


def test_listops_generation_is_deterministic():
    first = generate_listops(12, seed=5, num_workers=1, chunk_size=4)
    assert generate_listops(12, seed=5, num_workers=2, chunk_size=4) == first
    assert generate_listops(12, seed=6, num_workers=1, chunk_size=4) != first


def test_listops_config_rejects_impossible_lengths():
    with pytest.raises(ValueError, match='min_length < tokens < max_length'):
        ListOpsConfig(max_depth=3, max_args=3, min_length=500)
    with pytest.raises(ValueError, match='min_length < tokens < max_length'):
        ListOpsConfig(min_length=1999)


def test_listops_tokenizer():
    source = '( ( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )'
    ids = encode_listops(source)
    assert ids.tolist() == [12, 3, 11, 5, 8, 15, 1, 15]
    assert decode_listops(ids) == '[MAX 2 [MIN 4 7 ] 0 ]'
    assert encode_listops('[MED 1 5 3 ]').tolist() == [13, 2, 6, 4, 15]
    assert LRA_TASKS['listops'].vocab_size == 16
    for bad in ('[MAX 2 10 ]', '[AVG 1 2 ]', '[MAX 2 x ]'):
        with pytest.raises(ValueError, match='unknown ListOps token'):
            encode_listops(bad)


def test_listops_tsv_dataset_and_collate(tmp_path):
    examples = generate_listops(6, seed=0, num_workers=1)
    path = tmp_path / 'basic_test.tsv'
    write_listops_tsv(examples, path)
    assert path.read_text().splitlines()[0] == 'Source\tTarget'
    sequences, labels = read_listops_tsv(path)
    assert labels.tolist() == [label for _, label in examples]
    data = ListOpsDataset(path)
    for (source, label), (ids, item_label) in zip(examples, data):
        assert ids.dtype == torch.long and item_label == label
        assert eval_listops(decode_listops(ids)) == label
    ids, mask, batch_labels = lra_collate_fn('listops')([data[0], data[1], data[2]])
    lengths = [len(data[i][0]) for i in range(3)]
    assert ids.shape == (3, max(lengths)) and mask.sum(1).tolist() == lengths
    assert (ids[~mask] == 0).all() and (ids[mask] > 0).all()
    assert batch_labels.tolist() == [examples[i][1] for i in range(3)]
    fixed_ids, fixed_mask, _ = lra_collate_fn('listops', max_len=2000)([data[0]])
    assert fixed_ids.shape == (1, 2000) and fixed_mask.sum() == lengths[0]


def test_listops_generated_splits_are_cached(tmp_path):
    config = ListOpsConfig(num_train=8, num_val=2, num_test=2)
    root = generate_listops_splits(tmp_path, seed=1, config=config, num_workers=1)
    files = {name: (root / name).stat().st_mtime_ns for name in ('basic_train.tsv', 'basic_val.tsv', 'basic_test.tsv')}
    assert generate_listops_splits(tmp_path, seed=1, config=config, num_workers=1) == root
    assert {name: (root / name).stat().st_mtime_ns for name in files} == files
    train, val, test = build_lra_datasets('listops', cache_dir=tmp_path, seed=1, num_examples=50, num_workers=1)
    assert (len(train), len(val), len(test)) == (48, 1, 1)


def test_listops_official_layout_and_errors(tmp_path):
    folder = tmp_path / 'listops-1000'
    folder.mkdir()
    rows = {'train': [('( ( ( [MAX 2 ) 9 ) ] )', 9), ('( ( ( [SM 3 ) 9 ) ] )', 2)],
            'val': [('( ( ( ( [MED 1 ) 5 ) 3 ) ] )', 3)], 'test': [('( ( ( [MIN 4 ) 7 ) ] )', 4)]}
    for split, examples in rows.items():
        (folder / f'basic_{split}.tsv').write_text(
            'Source\tTarget\r\n' + ''.join(f'{s}\t{t}\r\n' for s, t in examples))
    train, val, test = build_lra_datasets('listops', data_dir=tmp_path)
    assert [label for _, label in train] == [9, 2] and len(val) == 1 and len(test) == 1
    assert decode_listops(train[0][0]) == '[MAX 2 9 ]'

    (folder / 'basic_val.tsv').write_text('Src\tLabel\n[MAX 1 2 ]\t2\n')
    with pytest.raises(ValueError, match='basic_val.tsv.*Source'):
        build_lra_datasets('listops', data_dir=tmp_path)
    (folder / 'basic_val.tsv').write_text('Source\tTarget\n[MAX 1 2 ]\t12\n')
    with pytest.raises(ValueError, match='line 2'):
        build_lra_datasets('listops', data_dir=tmp_path)
    (folder / 'basic_val.tsv').unlink()
    with pytest.raises(FileNotFoundError, match='basic_val.tsv'):
        build_lra_datasets('listops', data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------------ Retrieval

def write_aan(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b''.join(b'\t'.join(fields) + b'\n' for fields in rows))


def test_retrieval_reader(tmp_path):
    long_text = b'x' * 4100
    rows = {'train': [(b'1', b'a1', b'b1', 'Café ünï'.encode(), b'abc'), (b'0.0', b'a2', b'b2', long_text, b'q')],
            'eval': [(b'1.0', b'a3', b'b3', b'hello', b'world')], 'test': [(b'0', b'a4', b'b4', b'', b'y')]}
    for split, split_rows in rows.items():
        write_aan(tmp_path / 'tsv_data' / f'new_aan_pairs.{split}.tsv', split_rows)
    train, val, test = build_lra_datasets('retrieval', data_dir=tmp_path)
    assert (len(train), len(val), len(test)) == (2, 1, 1)
    ids1, ids2, label = train[0]
    assert label == 1 and ids1.tolist() == [b + 1 for b in 'Café ünï'.encode()] and ids2.tolist() == [98, 99, 100]
    ids1, ids2, label = train[1]
    assert label == 0 and len(ids1) == 4000 and (ids1 == ord('x') + 1).all()
    assert val[0][2] == 1 and test[0][2] == 0 and len(test[0][0]) == 0 and test[0][1].tolist() == [ord('y') + 1]
    ids1, mask1, ids2, mask2, labels = lra_collate_fn('retrieval')([train[0], train[1]])
    assert ids1.shape == (2, 4000) and mask1.sum(1).tolist() == [len('Café ünï'.encode()), 4000]
    assert ids2.shape == (2, 3) and mask2.sum(1).tolist() == [3, 1] and labels.tolist() == [1, 0]


def test_retrieval_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='new_aan_pairs.train.tsv'):
        build_lra_datasets('retrieval', data_dir=tmp_path)
    path = tmp_path / 'bad.tsv'
    write_aan(path, [(b'1', b'a', b'b', b'text1', b'text2'), (b'1', b'a', b'b', b'only four fields')])
    with pytest.raises(ValueError, match='line 2.*5 tab-separated'):
        AANRetrievalDataset(path)
    write_aan(path, [(b'yes', b'a', b'b', b't1', b't2')])
    with pytest.raises(ValueError, match='line 1'):
        AANRetrievalDataset(path)


# ----------------------------------------------------------------------------------------------------------- Text

IMDB = {('train', 'pos'): {'1_9.txt': 'Great film.', '0_10.txt': 'Loved it <br /> a lot'},
        ('train', 'neg'): {'3_1.txt': 'Dull.', '7_2.txt': 'y' * 5000},
        ('test', 'pos'): {'2_8.txt': 'Fine, très bien'}, ('test', 'neg'): {'5_3.txt': 'Bad'}}


def test_imdb_reader_folder_and_archive(tmp_path):
    folder = tmp_path / 'extracted' / 'aclImdb'
    for (split, name), files in IMDB.items():
        (folder / split / name).mkdir(parents=True)
        for file_name, text in files.items():
            (folder / split / name / file_name).write_text(text, encoding='utf-8')
    (folder / 'train' / 'unsup').mkdir()
    (folder / 'train' / 'unsup' / '0_0.txt').write_text('unlabelled')
    (tmp_path / 'packed').mkdir()
    with tarfile.open(tmp_path / 'packed' / 'aclImdb_v1.tar.gz', 'w:gz') as archive:
        archive.add(folder, arcname='aclImdb')

    from_folder = build_lra_datasets('text', data_dir=tmp_path / 'extracted')
    from_archive = build_lra_datasets('text', data_dir=tmp_path / 'packed')
    for a, b in zip(from_folder, from_archive):
        assert len(a) == len(b) and all(torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] for i in range(len(a)))
    train, val, test = from_folder
    assert len(train) == 4 and val is test and len(test) == 2
    texts = {bytes((train[i][0] - 1).tolist()): train[i][1] for i in range(4)}
    assert texts[b'Great film.'] == 1 and texts[b'Dull.'] == 0 and texts[b'y' * 4096] == 0
    assert {bytes((test[i][0] - 1).tolist()): test[i][1] for i in range(2)} == {'Fine, très bien'.encode(): 1,
                                                                                 b'Bad': 0}
    assert LRA_TASKS['text'].vocab_size == 257 and all(int(train[i][0].min()) >= 1 for i in range(4))


def test_imdb_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='aclImdb'):
        build_lra_datasets('text', data_dir=tmp_path)
    (tmp_path / 'aclImdb' / 'train' / 'pos').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='train/neg'):
        build_lra_datasets('text', data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------------------- Image

def cifar_batch(rng, n, label_base):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return {b'batch_label': b'x', b'data': data, b'labels': [(label_base + i) % 10 for i in range(n)],
            b'filenames': [b'f'] * n}


def test_grayscale_matches_tensorflow_rule():
    # tf.image.rgb_to_grayscale on uint8: gray = 0.2989 r + 0.5870 g + 0.1140 b on [0, 1] floats, then
    # truncate(gray * 255.5); values worked out by hand
    rgb = np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 150, 200]], np.uint8)
    assert rgb_to_grayscale(rgb).tolist() == [255, 0, 76, 149, 29, 141]


def test_cifar_reader_folder_and_archive(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'extracted' / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    batches = {f'data_batch_{i}': cifar_batch(rng, 4, i) for i in range(1, 6)}
    batches['test_batch'] = cifar_batch(rng, 3, 7)
    batches['data_batch_1'][b'data'][0] = 0
    batches['data_batch_1'][b'data'][0][1] = 255          # red plane, row 0, column 1
    batches['data_batch_1'][b'data'][0][1024 + 32] = 255  # green plane, row 1, column 0
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch))
    (tmp_path / 'packed').mkdir()
    with tarfile.open(tmp_path / 'packed' / 'cifar-10-python.tar.gz', 'w:gz') as archive:
        archive.add(folder, arcname='cifar-10-batches-py')

    train, val, test = build_lra_datasets('image', data_dir=tmp_path / 'extracted')
    assert (len(train), len(val), len(test)) == (18, 2, 3)
    pixels, label = train[0]
    assert pixels.shape == (1024,) and pixels.dtype == torch.long and label == 1
    image = pixels.view(32, 32)
    assert image[0, 1] == 76 and image[1, 0] == 149 and image.sum() == 76 + 149
    all_rgb = np.concatenate([batches[f'data_batch_{i}'][b'data'] for i in range(1, 6)])
    expected = rgb_to_grayscale(all_rgb.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)).reshape(20, -1)
    assert torch.equal(val[1][0], torch.from_numpy(expected[19].astype(np.int64)))
    assert [test[i][1] for i in range(3)] == [7, 8, 9]
    packed = build_lra_datasets('image', data_dir=tmp_path / 'packed')
    assert all(torch.equal(packed[0][i][0], train[i][0]) for i in range(len(train)))

    (folder / 'data_batch_3').unlink()
    with pytest.raises(FileNotFoundError, match='data_batch_3'):
        build_lra_datasets('image', data_dir=tmp_path / 'extracted')
    (folder / 'data_batch_3').write_bytes(pickle.dumps({b'data': np.zeros((2, 10), np.uint8), b'labels': [0, 1]}))
    with pytest.raises(ValueError, match='data_batch_3'):
        build_lra_datasets('image', data_dir=tmp_path / 'extracted')


# ----------------------------------------------------------------------------------------------------- Pathfinder

def write_pathfinder_folder(root, counts):
    """Official layout: metadata/<n>.npy text lines 'imgs/<n> sample_<i>.png <i> <label> ...' and the PNGs."""
    rng = np.random.default_rng(0)
    expected = []
    for batch, count in counts.items():
        lines = []
        for i in range(count):
            label = int(rng.integers(0, 2))
            image = rng.integers(0, 256, (32, 32), dtype=np.uint8)
            (root / 'imgs' / str(batch)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / 'imgs' / str(batch) / f'sample_{i}.png')
            lines.append(f'imgs/{batch} sample_{i}.png {i} {label} 1.0 14 4 2 0.5 1 1\n')
            expected.append((image, label))
        (root / 'metadata').mkdir(exist_ok=True)
        (root / 'metadata' / f'{batch}.npy').write_text(''.join(lines))
    return expected


def test_pathfinder_official_layout(tmp_path):
    root = tmp_path / 'pathfinder32' / 'curv_contour_length_14'
    expected = write_pathfinder_folder(root, {0: 5, 2: 3, 10: 12})  # metadata order: 0, 2, 10 (numeric)
    (root / 'imgs' / '10' / 'sample_11.png').write_bytes(b'')      # empty images are skipped, as in LRA
    expected.pop()
    train, val, test = build_lra_datasets('pathfinder', data_dir=tmp_path)
    assert (len(train), len(val), len(test)) == (15, 2, 2)  # 19 images split 80/10/10 in order
    items = [d[i] for d in (train, val, test) for i in range(len(d))]
    for (pixels, label), (image, expected_label) in zip(items, expected):
        assert label == expected_label and torch.equal(pixels, torch.from_numpy(image.reshape(-1).astype(np.int64)))
    with pytest.raises(FileNotFoundError, match='curv_baseline'):
        build_lra_datasets('pathfinder', data_dir=tmp_path, difficulty='easy')


def test_pathfinder_official_errors(tmp_path):
    root = tmp_path / 'pathfinder32' / 'curv_contour_length_14'
    write_pathfinder_folder(root, {0: 2})
    (root / 'imgs' / '0' / 'sample_1.png').unlink()
    with pytest.raises(FileNotFoundError, match='sample_1.png'):
        build_lra_datasets('pathfinder', data_dir=tmp_path)
    (root / 'metadata' / '0.npy').write_text('imgs/0 sample_0.png 0\n')
    with pytest.raises(ValueError, match='0.npy, line 1'):
        build_lra_datasets('pathfinder', data_dir=tmp_path)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / 'imgs' / '0' / 'sample_1.png')
    (root / 'metadata' / '0.npy').write_text('imgs/0 sample_1.png 0 1\n' * 10)
    train, _, _ = build_lra_datasets('pathfinder', data_dir=tmp_path)
    with pytest.raises(ValueError, match='32x32'):
        train[0]


# 32: consecutive dashes touch, so a contour is 8-connected; 128: the dashes are apart (gaps under 2 px), bridged
# by linking pixels up to 2 rows/columns apart, which the 3 px clearance between contours never does
@pytest.mark.parametrize('size, count, reach', [(32, 120, 1), (128, 10, 2)])
def test_pathfinder_generator_labels_by_connectivity(size, count, reach):
    config = pathfinder_config(size)
    data = generate_pathfinder(count, config, seed=3, num_workers=1)
    images, labels, markers = data['images'], data['labels'], data['markers']
    assert images.shape == (count, size, size) and images.dtype == np.uint8
    assert labels.sum() == count // 2  # balanced
    min_contour_pixels = config.contour_length * config.paddle_length
    for image, label, marks in zip(images, labels, markers):
        comp = components(image > 0, reach)
        (y0, x0), (y1, x1) = np.rint(marks).astype(int)
        assert image[y0, x0] == image[y1, x1] == 255  # marker disks
        assert comp[y0, x0] and comp[y1, x1]
        assert (comp[y0, x0] == comp[y1, x1]) == bool(label)
        assert (comp == comp[y0, x0]).sum() >= min_contour_pixels  # the marker sits on a long contour
        assert comp.max() >= 3  # two target contours and at least one distractor


def test_pathfinder_generation_is_deterministic():
    config = pathfinder_config(32, 'easy')
    first = generate_pathfinder(40, config, seed=7, num_workers=1, chunk_size=10)
    again = generate_pathfinder(40, config, seed=7, num_workers=2, chunk_size=10)
    other = generate_pathfinder(40, config, seed=8, num_workers=1, chunk_size=10)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first['images'], other['images'])
    assert first['labels'].sum() == 20


def test_pathfinder_generated_datasets_are_cached(tmp_path):
    train, val, test = build_lra_datasets('pathfinder', cache_dir=tmp_path, seed=0, num_examples=60, num_workers=1)
    assert (len(train), len(val), len(test)) == (48, 6, 6)
    pixels, label = train[0]
    assert pixels.shape == (1024,) and pixels.dtype == torch.long and 0 <= int(pixels.min()) <= int(pixels.max()) <= 255
    (cached,) = tmp_path.glob('pathfinder32-seed0-*.npz')
    stamp = cached.stat().st_mtime_ns
    again = build_lra_datasets('pathfinder', cache_dir=tmp_path, seed=0, num_examples=60, num_workers=1)
    assert cached.stat().st_mtime_ns == stamp and torch.equal(again[0][0][0], pixels)
    ids, mask, labels = lra_collate_fn('pathfinder')([train[0], train[1]])
    assert ids.shape == (2, 1024) and mask.all() and labels.tolist() == [train[0][1], train[1][1]]


# ---------------------------------------------------------------------------------------------------- entry point

def test_task_metadata_and_entry_point_errors():
    assert {name: (t.num_classes, t.max_len) for name, t in LRA_TASKS.items()} == {
        'listops': (10, 2000), 'text': (2, 4096), 'retrieval': (2, 4000), 'image': (10, 1024),
        'pathfinder': (2, 1024), 'pathx': (2, 16384)}
    for task in ('text', 'retrieval', 'image'):
        with pytest.raises(ValueError, match='data_dir'):
            build_lra_datasets(task)
    with pytest.raises(ValueError, match='unknown LRA task'):
        build_lra_datasets('mnist')
    with pytest.raises(ValueError, match='difficulty'):
        build_lra_datasets('pathx', difficulty='extreme')
