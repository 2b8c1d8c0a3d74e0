"""Multi-query associative recall (MQAR), as in Zoology (Arora et al. 2023; HazyResearch/zoology
zoology/data/associative_recall.py, `_mqar`).

A sequence opens with num_kv_pairs key-value pairs (keys from [1, vocab/2), values from [vocab/2, vocab), each key
and each value distinct within the sequence); every key is then queried once, at even offsets after the pairs,
drawn from a power law that favours short gaps.  The label at a query is the value paired with its key (the next
token to predict there); every other label is -100, so the loss and accuracy count answer positions only.  The
remaining tokens are random ids of the whole vocabulary.
"""
import torch

IGNORE_INDEX = -100


def _distinct(num_rows, count, low, high, generator):
    """[num_rows, count] ids from [low, high), distinct within each row, in random order: the positions of the
    `count` largest of (high - low) uniform draws per row: a uniform random subset, drawn about 3x faster than by
    torch.multinomial without replacement over 4096 ids."""
    device = generator.device if generator is not None else None
    return torch.rand(num_rows, high - low, generator=generator, device=device).topk(count, dim=1).indices + low


def multiquery_ar(num_examples, seq_len, num_kv_pairs, vocab_size=8192, power_a=0.01, generator=None):
    """MQAR examples: (inputs [N, seq_len] int64, labels [N, seq_len] int64 with -100 off the answer positions).

    Needs seq_len even, num_kv_pairs * 4 <= seq_len and vocab_size > seq_len (as Zoology).  power_a: the gap
    between a pair and its query has probability ~ gap ** (power_a - 1); 1.0 is uniform.  The examples are made
    on the generator's device (a CUDA generator: no CPU work per batch).
    """
    if seq_len % 2 or num_kv_pairs * 4 > seq_len or vocab_size <= seq_len:
        raise ValueError(f'MQAR needs an even seq_len >= 4 * num_kv_pairs and vocab_size > seq_len, got '
                         f'seq_len={seq_len}, num_kv_pairs={num_kv_pairs}, vocab_size={vocab_size}')
    N, P, context = num_examples, num_kv_pairs, 2 * num_kv_pairs
    device = generator.device if generator is not None else None
    keys = _distinct(N, P, 1, vocab_size // 2, generator)
    values = _distinct(N, P, vocab_size // 2, vocab_size, generator)
    space = (seq_len - context) // 2
    gap_weights = power_a * torch.arange(1, space + 1, dtype=torch.float64, device=device) ** (power_a - 1)
    gaps = torch.multinomial(gap_weights.expand(N, space), P, replacement=False, generator=generator)
    query_pos = context + 2 * gaps                                   # [N, P], the i-th queries the i-th key

    inputs = torch.randint(vocab_size, (N, seq_len), generator=generator, device=device)
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    inputs.scatter_(1, query_pos, keys)
    labels = torch.full((N, seq_len), IGNORE_INDEX, dtype=torch.long, device=device).scatter_(1, query_pos, values)
    return inputs, labels
