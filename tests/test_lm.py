"""MetaLA causal LM: config and checkpoint round trips, parallel forward vs prefill + recurrent decoding, generate(),
and scripts/train_lm.py's resume."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from metala_vision.layers import MetaLAMixer
from metala_vision.models.metala_lm import MetaLAConfig, MetaLAForCausalLM
from metala_vision.training import read_jsonl
from script_loader import load_script

VOCAB = 64


pytestmark = pytest.mark.usefixtures('one_thread')


def tiny_config(**overrides):
    # initializer_range 0.2 (not 0.02) so that the decays, the conv window and the state visibly shape the logits
    kw = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, initializer_range=0.2)
    return MetaLAConfig(**{**kw, **overrides})


def tiny_model(dtype=torch.float32, seed=0, **overrides):
    torch.manual_seed(seed)
    model = MetaLAForCausalLM(tiny_config(**overrides)).to(dtype).eval()
    with torch.no_grad():  # zero at init, as released: give the self-augmentation term a part to play
        for block in model.model.layers:
            block.attn.aug_weight.normal_(0, 1.0)
    return model


def test_config_round_trip(tmp_path):
    config = tiny_config(attn_backend='fla', tie_word_embeddings=False, gate_norm=8.0)
    assert config.intermediate_size == 256                    # 8/3 * 64 rounded up to a multiple of 256
    assert config.layer_types == ['linear_attention'] * 2
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MetaLAConfig
    assert loaded.to_diff_dict() == config.to_diff_dict() and loaded.gate_norm == 8.0
    assert MetaLAConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_decay_init_survives_init_and_reload(tmp_path):
    """transformers' init zeroes linear biases; the gate biases of decay_init are set after it, and a saved model
    loads with them (and with decay_init in its config)."""
    model = tiny_model(decay_init=[2, 64])
    expected = MetaLAMixer(64, 2, short_conv='causal', causal=True, decay_init=(2, 64)).gate_bias
    for block in model.model.layers:
        torch.testing.assert_close(block.attn.gate_bias, expected)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.decay_init == [2, 64]
    for block in loaded.model.layers:
        torch.testing.assert_close(block.attn.gate_bias, expected)


@pytest.mark.parametrize('bad', [dict(num_attention_heads=4), dict(num_attention_heads=3),
                                 dict(attn_backend='cuda')])
def test_config_rejects_unsupported(bad):
    with pytest.raises(ValueError):
        tiny_config(**bad)


@pytest.mark.parametrize('tie', [True, False])
def test_save_and_load_pretrained(tmp_path, tie):
    model = tiny_model(tie_word_embeddings=tie)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    model.save_pretrained(tmp_path)
    assert (tmp_path / 'model.safetensors').exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is MetaLAForCausalLM
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def decode_in_pieces(model, ids, pieces, mask=None):
    """Logits of ids [B, T] fed through one cache in the given piece lengths (summing to T)."""
    cache, logits, start = DynamicCache(config=model.config), [], 0
    for n in pieces:
        piece_mask = None if mask is None else mask[:, :start + n]   # generate()'s convention: past + current
        logits.append(model(ids[:, start:start + n], attention_mask=piece_mask, cache=cache, use_cache=True).logits)
        start += n
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_parallel_equals_prefill_plus_recurrent_decoding(dtype, tol):
    model = tiny_model(dtype)
    ids = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        pieces = [19, 2, 6] + [1] * 13   # prompt, a short prompt (shorter than the conv), a chunk, then steps
        incremental, cache = decode_in_pieces(model, ids, pieces)
        # the same tokens without their history give other logits: the cache carries it
        fresh = model(ids[:, 27:], use_cache=False).logits
    assert full.dtype == dtype
    err = ((incremental - full).norm() / full.norm()).item()
    assert err < tol, err
    assert ((fresh - full[:, 27:]).norm() / full.norm()).item() > 1e-2
    # O(1) memory per token: per layer one [B, H, K, V] state and a [B, D, conv_size] window
    for layer in cache.layers:
        assert tuple(layer.recurrent_states[0].shape) == (3, 2, 16, 32)
        assert tuple(layer.conv_states[0].shape) == (3, 64, 4)


def test_left_padding_leaves_real_tokens_unchanged():
    model = tiny_model(torch.float64)
    ids = torch.randint(3, VOCAB, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0                                             # row 0: 5 pads, then 7 real tokens
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        alone = model(ids[:1, 5:]).logits
        incremental, _ = decode_in_pieces(model, ids, [8, 1, 1, 1, 1], mask)
    torch.testing.assert_close(padded[:1, 5:], alone, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(padded[1:], model(ids[1:]).logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(incremental[:, 5:], padded[:, 5:], rtol=1e-10, atol=1e-10)


def manual_greedy(model, ids, new_tokens):
    """Greedy decoding by full forwards over the growing sequence (no cache)."""
    for _ in range(new_tokens):
        next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], 1)
    return ids


def test_generate_greedy_matches_manual_loop():
    model = tiny_model(eos_token_id=None)
    ids = torch.randint(3, VOCAB, (2, 9))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        again = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        expected = manual_greedy(model, ids, 12)
    assert out.shape == (2, 21)
    assert torch.equal(out, again)
    assert torch.equal(out, expected)
    assert len(set(out[0, 9:].tolist())) > 1                    # not a degenerate constant continuation


def test_generate_left_padded_batch_matches_single_prompts():
    model = tiny_model(eos_token_id=None)
    long, short = torch.randint(3, VOCAB, (1, 8)), torch.randint(3, VOCAB, (1, 5))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    with torch.no_grad():
        out = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
        alone = [model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=6, do_sample=False)
                 for p in (long, short)]
    assert torch.equal(out[0, 8:], alone[0][0, 8:])
    assert torch.equal(out[1, 8:], alone[1][0, 5:])


def test_generate_sampling_follows_the_seed():
    model = tiny_model(eos_token_id=None)
    ids = torch.randint(3, VOCAB, (2, 6))

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=True,
                              temperature=1.5, top_k=0)
    with torch.no_grad():
        first, same, other = sample(1), sample(1), sample(2)
    assert torch.equal(first, same)
    assert not torch.equal(first, other)
    assert torch.equal(first[:, :6], ids)


def test_loss_is_next_token_cross_entropy():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 10))
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_train_lm_resumes_where_it_stopped(tmp_path):
    """scripts/train_lm.py: a run stopped after 2 of 4 updates and resumed ends where an uninterrupted run does."""
    train_lm = load_script('train_lm')
    text = tmp_path / 'corpus.txt'
    text.write_text('the quick brown fox jumps over the lazy dog. ' * 40)
    settings = ['model.hidden_size=64', 'model.num_hidden_layers=1', 'model.num_attention_heads=1', 'seq_len=32',
                'batch_size=4', 'updates=4', 'warmup_updates=1', 'eval_interval=2', 'eval_windows=4',
                'checkpoint_interval=2', 'log_interval=1', 'sample_tokens=0']

    def run(name, *extra):
        argv = ['--cpu', '--data', str(text), '--output', str(tmp_path / name), *settings, *extra]
        assert train_lm.main(argv) == 0
        return [r for r in read_jsonl(tmp_path / name / 'log.jsonl') if r['event'] in ('train', 'eval')]

    straight = run('straight')
    run('resumed', 'stop_after_updates=2')
    resumed = run('resumed', '--resume', 'auto')
    assert [r['update'] for r in resumed if r['event'] == 'train'] == [1, 2, 3, 4]
    assert len(straight) == len(resumed) == 6
    for a, b in zip(straight, resumed):
        assert a['event'] == b['event'] and a['update'] == b['update']
        assert abs(a.get('loss', a.get('val_loss')) - b.get('loss', b.get('val_loss'))) < 1e-6
    train_losses = [r['loss'] for r in straight if r['event'] == 'train']
    assert train_losses[-1] < train_losses[0], train_losses
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / 'resumed' / 'model')
    assert type(loaded) is MetaLAForCausalLM and loaded.config.vocab_size == 259


def test_fla_backend_runs_chunk_gla_on_whole_chunks(monkeypatch):
    """attn_backend='fla' on the CPU, fla's chunk_gla replaced by fla's own naive recurrence (its Triton ops need a
    GPU): every call gets whole chunks of 64 tokens, and the appended pads change neither the logits of a parallel
    forward nor those of prefill + decoding in pieces (which carry the final state)."""
    import fla.ops.gla
    from fla.ops.gla.naive import naive_recurrent_gla
    lengths = []

    def chunk_gla(q, k, v, g, scale, initial_state, output_final_state):
        lengths.append(q.shape[1])
        assert scale == q.shape[-1] ** -0.5  # naive_recurrent_gla's scale
        return naive_recurrent_gla(q, k, v, g, initial_state=initial_state, output_final_state=output_final_state)

    monkeypatch.setattr(fla.ops.gla, 'chunk_gla', chunk_gla)
    ids = torch.randint(0, VOCAB, (2, 100))
    with torch.no_grad():
        reference = tiny_model()(ids, use_cache=False).logits
        model = tiny_model(attn_backend='fla')
        full = model(ids, use_cache=False).logits
        incremental, _ = decode_in_pieces(model, ids, [60, 20, 1, 19])
    assert lengths == [128] * 2 + [64] * 6, lengths  # 2 layers: 100 tokens, then 60, 20 and 19 (1 token: a step)
    torch.testing.assert_close(full, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(incremental, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA (Triton kernels, fla)')
@pytest.mark.parametrize('backend, tol', [('metala', 1e-4), ('fla', 5e-3)])
def test_cuda_backends_match_the_cpu_model(backend, tol):
    """On a GPU, fp32: the Triton (or fla chunk_gla) prompt path and the recurrent steps against the CPU model."""
    ids = torch.randint(0, VOCAB, (2, 100))
    with torch.no_grad():
        reference = tiny_model(hidden_size=128)(ids).logits
        model = tiny_model(hidden_size=128, attn_backend=backend).cuda()
        full = model(ids.cuda()).logits
        incremental, _ = decode_in_pieces(model, ids.cuda(), [60, 20] + [1] * 20)
    assert ((full.cpu() - reference).norm() / reference.norm()).item() < tol
    assert ((incremental - full).norm() / full.norm()).item() < tol
