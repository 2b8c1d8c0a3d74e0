"""Text for language modelling: a byte-level tokenizer (no download) and a token stream from text files.

The byte-level tokenizer is transformers' ByT5Tokenizer without sentinel ids: 259 ids, pad 0, eos 1, unk 2, then
the 256 byte values (MetaLAConfig's defaults match it).  Any Hugging Face tokenizer object works in its place.
"""
from pathlib import Path

import torch
from transformers import ByT5Tokenizer

TEXT_SUFFIXES = ('.txt', '.md', '.text')


def byte_tokenizer():
    """UTF-8 bytes as ids 3..258 (pad 0, eos 1, unk 2): a 259-id tokenizer that needs no files."""
    return ByT5Tokenizer(extra_ids=0)


def text_files(path):
    """The file at path, or the text files (.txt, .md, .text) under the folder at path, sorted; raises
    FileNotFoundError if there are none."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob('*') if p.suffix in TEXT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f'no text file at {path} (a file, or a folder with {", ".join(TEXT_SUFFIXES)} files)')
    return files


def encode_files(files, tokenizer):
    """One int64 token stream [N]: each file's ids (no special tokens) followed by the tokenizer's eos id."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = []
    for file in files:
        ids += tokenizer(Path(file).read_text(encoding='utf-8'), add_special_tokens=False)['input_ids'] + eos
    return torch.tensor(ids, dtype=torch.long)


def random_windows(tokens, batch_size, seq_len, generator=None):
    """batch_size windows of seq_len consecutive tokens at uniform random offsets: [batch_size, seq_len]."""
    if tokens.numel() < seq_len:
        raise ValueError(f'{tokens.numel()} tokens are fewer than seq_len={seq_len}')
    starts = torch.randint(tokens.numel() - seq_len + 1, (batch_size,), generator=generator)
    return tokens[starts[:, None] + torch.arange(seq_len)]


def sequential_windows(tokens, seq_len):
    """The tokens cut into consecutive windows of seq_len, the remainder dropped: [N // seq_len, seq_len]."""
    return tokens[:tokens.numel() // seq_len * seq_len].view(-1, seq_len)
