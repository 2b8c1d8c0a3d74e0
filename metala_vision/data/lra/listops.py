"""ListOps as in Long Range Arena: generator, tokenizer and reader of the official TSV files.

An expression is a tree of operators over the digits 0-9, in prefix form with closing brackets:
``[MAX 2 9 [MIN 4 7 ] 0 ]`` evaluates to 9. Operators: MIN, MAX, MED (median of the arguments, truncated to
an int as ``int(np.median(args))``), SM (sum modulo 10). The official files
``listops-1000/basic_{train,val,test}.tsv`` hold a ``Source\\tTarget`` table with a header, and write each
operator application with parenthesis decorations: ``[MAX 2 9 ]`` is stored as ``( ( ( [MAX 2 ) 9 ) ] )``.

The generator follows the LRA rules: below depth 10 a node is an operator with probability 0.25, else a digit;
an operator takes 2-10 arguments; an expression is kept when 500 < tokens < 2000 (tokens: digits, operators
and closing brackets; parentheses are decorations); duplicates are dropped; the 100,000 examples are split
96,000 / 2,000 / 2,000 in generation order.

Tokens: pad 0, digits 1-10, [MIN [MAX [MED [SM 11-14, ] 15. The parentheses are dropped. (The LRA input
pipeline used an alphanumeric tokenizer that also dropped the closing brackets; they are kept here, as most
later work does, since the expression is ambiguous without them.)
"""
import csv
import random
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import PAD_ID, TokenSequenceDataset, config_digest, publish, resolve_cache_dir

OPERATORS = ('[MIN', '[MAX', '[MED', '[SM')
END = ']'
TOKENS = tuple(str(d) for d in range(10)) + OPERATORS + (END,)
TOKEN_TO_ID = {tok: i + 1 for i, tok in enumerate(TOKENS)}
VOCAB_SIZE = len(TOKENS) + 1  # + padding
NUM_CLASSES = 10
MAX_LEN = 2000
SPLIT_FILES = {'train': 'basic_train.tsv', 'val': 'basic_val.tsv', 'test': 'basic_test.tsv'}

# Fast tokenizer: operators become one control character each, then one table lookup per character.
_OP_CHARS = {op: chr(1 + i) for i, op in enumerate(OPERATORS)}
_CHAR_TO_ID = np.full(128, 255, dtype=np.uint8)
for _tok, _id in TOKEN_TO_ID.items():
    _CHAR_TO_ID[ord(_OP_CHARS.get(_tok, _tok))] = _id


@dataclass(frozen=True)
class ListOpsConfig:
    """Generation rules; the defaults are those of the LRA release (task 'basic')."""
    num_train: int = 96_000
    num_val: int = 2_000
    num_test: int = 2_000
    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500   # kept when min_length < tokens < max_length
    max_length: int = 2000
    op_prob: float = 0.25   # probability that a node shallower than max_depth is an operator

    def __post_init__(self):
        if self.max_depth < 2 or self.max_args < 2 or not 0 < self.op_prob <= 1:
            raise ValueError(f'need max_depth >= 2, max_args >= 2 and 0 < op_prob <= 1: {self}')
        longest = 1  # tokens of the largest tree: every operator has max_args arguments
        for _ in range(self.max_depth - 1):
            longest = 2 + self.max_args * longest
        if longest <= self.min_length or self.min_length + 1 >= self.max_length:
            raise ValueError(f'no expression has min_length < tokens < max_length under {self}')


def encode_listops(source):
    """Token ids (uint8 [T]) of one expression, in official TSV form or plain; parentheses are dropped."""
    text = source
    for op, char in _OP_CHARS.items():
        text = text.replace(op, char)
    tokens = text.replace('(', ' ').replace(')', ' ').split()
    compact = ''.join(tokens)
    if len(compact) == len(tokens) and compact.isascii():
        ids = _CHAR_TO_ID[np.frombuffer(compact.encode('ascii'), dtype=np.uint8)]
        if ids.max(initial=0) != 255:
            return ids
    bad = next(t for t in source.replace('(', ' ').replace(')', ' ').split() if t not in TOKEN_TO_ID)
    raise ValueError(f'unknown ListOps token {bad!r} (known: {", ".join(TOKENS)})')


def decode_listops(ids):
    """Space-separated plain expression of token ids; padding ids are skipped."""
    return ' '.join(TOKENS[int(i) - 1] for i in ids if int(i) != PAD_ID)


def _apply(op, args):
    if op == 0:
        return min(args)
    if op == 1:
        return max(args)
    if op == 2:  # int(np.median(args)): the mean of the middle pair, truncated, for an even count
        ordered = sorted(args)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    return sum(args) % 10


class _TooLong(Exception):
    pass


class _ExpressionSampler:
    """Draws random expressions under a ListOpsConfig from a seeded random.Random."""

    def __init__(self, config, seed):
        self.config = config
        self.rng = random.Random(seed)

    def sample(self):
        """One expression with min_length < tokens < max_length, as (official source string, value)."""
        while True:
            self.pieces, self.num_tokens = [], 0
            try:
                value = self._node(depth=1)
            except _TooLong:  # abandoned as soon as it reaches max_length tokens
                continue
            if self.num_tokens > self.config.min_length:
                return ''.join(self.pieces), value

    def _node(self, depth):
        """Appends one random subtree to self.pieces; returns its value."""
        rng, cfg = self.rng, self.config
        if depth >= cfg.max_depth or rng.random() >= cfg.op_prob:
            value = int(rng.random() * 10)
            self.pieces.append(TOKENS[value])
            self.num_tokens += 1
            if self.num_tokens >= cfg.max_length:  # every operator is followed by digits, so checked here
                raise _TooLong
            return value
        num_args = rng.randint(2, cfg.max_args)
        op = rng.randrange(len(OPERATORS))
        self.pieces.append('( ' * (num_args + 1) + OPERATORS[op])
        self.num_tokens += 2  # operator and closing bracket
        args = []
        for _ in range(num_args):
            self.pieces.append(' ')
            args.append(self._node(depth + 1))
            self.pieces.append(' )')
        self.pieces.append(' ] )')
        return _apply(op, args)


def _chunk_seed(seed, chunk):
    state = np.random.SeedSequence([seed, chunk]).generate_state(4)
    return int.from_bytes(state.tobytes(), 'little')


def _sample_chunk(args):
    config, seed, chunk, size = args
    sampler = _ExpressionSampler(config, _chunk_seed(seed, chunk))
    return [sampler.sample() for _ in range(size)]


class _InProcess:
    """Stand-in for ProcessPoolExecutor that maps in the calling process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, jobs):
        return map(fn, jobs)


def generate_listops(num_examples, seed=0, config=ListOpsConfig(), num_workers=None, chunk_size=1000):
    """num_examples distinct (official source string, label) pairs.

    Work is cut into chunks of chunk_size examples, chunk c drawing from a generator seeded by (seed, c), so
    the result depends on (num_examples, seed, config, chunk_size) only, not on num_workers (default: all
    CPU cores; 1 runs in this process).
    """
    examples, seen, chunk = [], set(), 0
    with ProcessPoolExecutor(num_workers) if num_workers != 1 else _InProcess() as pool:
        while len(examples) < num_examples:
            missing = num_examples - len(examples)
            sizes = [min(chunk_size, missing - i) for i in range(0, missing, chunk_size)]
            jobs = [(config, seed, chunk + i, size) for i, size in enumerate(sizes)]
            chunk += len(jobs)
            for part in pool.map(_sample_chunk, jobs):
                for source, label in part:
                    if source not in seen and len(examples) < num_examples:
                        seen.add(source)
                        examples.append((source, label))
    return examples


def write_listops_tsv(examples, path):
    """Writes (source, label) pairs as the official TSV: header Source, Target; tab-separated."""
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f, delimiter='\t')
        writer.writerow(['Source', 'Target'])
        writer.writerows(examples)


def read_listops_tsv(path):
    """Reads an official ListOps TSV -> (token ids: list of uint8 [T_i], labels: int64 [N])."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'ListOps file not found: {path} (expected a Source/Target TSV as in '
                                f'lra_release/listops-1000/basic_{{train,val,test}}.tsv)')
    sequences, labels = [], []
    with open(path, newline='') as f:
        rows = csv.reader(f, delimiter='\t')
        header = next(rows, None)
        if header != ['Source', 'Target']:
            raise ValueError(f'{path}: expected the header "Source<TAB>Target", found {header!r}')
        for line, row in enumerate(rows, start=2):
            if len(row) != 2 or not row[1].strip().isdigit() or int(row[1]) >= NUM_CLASSES:
                raise ValueError(f'{path}, line {line}: expected "<expression><TAB><label 0-9>", found {row!r}')
            try:
                sequences.append(encode_listops(row[0]))
            except ValueError as err:
                raise ValueError(f'{path}, line {line}: {err}') from None
            labels.append(int(row[1]))
    return sequences, np.asarray(labels, dtype=np.int64)


class ListOpsDataset(TokenSequenceDataset):
    """Examples of one official ListOps TSV; item: (input_ids LongTensor[T] with T <= max_len, label 0-9)."""

    def __init__(self, path, max_len=MAX_LEN):
        sequences, labels = read_listops_tsv(path)
        super().__init__(sequences, labels, max_len=max_len)
        self.path = Path(path)


def listops_split_paths(root):
    """Paths of the train/val/test TSVs in a folder laid out as lra_release/listops-1000."""
    return {split: Path(root) / name for split, name in SPLIT_FILES.items()}


def generate_listops_splits(cache_dir=None, seed=0, config=ListOpsConfig(), num_workers=None):
    """Generated ListOps splits as official TSVs, made once and cached; returns their folder.

    The folder, <cache_dir>/listops-seed<seed>-<hash of config>, holds basic_{train,val,test}.tsv.
    """
    root = resolve_cache_dir(cache_dir) / f'listops-seed{seed}-{config_digest(config, seed=seed)}'
    if all(p.is_file() for p in listops_split_paths(root).values()):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    total = config.num_train + config.num_val + config.num_test
    examples = generate_listops(total, seed=seed, config=config, num_workers=num_workers)
    bounds = {'train': (0, config.num_train), 'val': (config.num_train, config.num_train + config.num_val),
              'test': (config.num_train + config.num_val, total)}
    tmp = root.with_name(f'{root.name}.tmp-{uuid.uuid4().hex[:8]}')
    tmp.mkdir()
    for split, path in listops_split_paths(tmp).items():
        write_listops_tsv(examples[slice(*bounds[split])], path)
    publish(tmp, root)
    return root
