"""MQAR data (metala_vision.data.mqar) and the training loop of scripts/mqar.py."""
import pytest
import torch
import torch.nn.functional as F

from metala_vision.data.mqar import IGNORE_INDEX, multiquery_ar
from script_loader import load_script


@pytest.fixture(scope='module')
def mqar_script():
    return load_script('mqar')


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.mark.parametrize('seq_len, kv_pairs, vocab', [(64, 4, 8192), (128, 32, 8192), (32, 8, 40)])
def test_examples_follow_the_task(seq_len, kv_pairs, vocab):
    inputs, labels = multiquery_ar(200, seq_len, kv_pairs, vocab, generator=torch.Generator().manual_seed(0))
    assert inputs.shape == labels.shape == (200, seq_len) and inputs.dtype == labels.dtype == torch.long
    assert inputs.min() >= 0 and inputs.max() < vocab
    for x, y in zip(inputs.tolist(), labels.tolist()):
        keys, values = x[0:2 * kv_pairs:2], x[1:2 * kv_pairs:2]
        assert len(set(keys)) == kv_pairs and len(set(values)) == kv_pairs          # unique within the sample
        assert all(1 <= k < vocab // 2 <= v < vocab for k, v in zip(keys, values))
        pairs = dict(zip(keys, values))
        answers = [t for t, label in enumerate(y) if label != IGNORE_INDEX]
        # the loss mask: one answer position per pair, all after the pairs, at even offsets from them
        assert len(answers) == kv_pairs
        assert all(t >= 2 * kv_pairs and t % 2 == 0 for t in answers)
        assert sorted(x[t] for t in answers) == sorted(keys)                         # every key queried once
        assert all(y[t] == pairs[x[t]] for t in answers)                             # its value, paired earlier


def test_generator_makes_it_reproducible():
    a = multiquery_ar(8, 64, 8, generator=torch.Generator().manual_seed(3))
    b = multiquery_ar(8, 64, 8, generator=torch.Generator().manual_seed(3))
    c = multiquery_ar(8, 64, 8, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_power_law_favours_short_gaps():
    def mean_answer_position(power_a):
        _, labels = multiquery_ar(400, 256, 4, power_a=power_a, generator=torch.Generator().manual_seed(0))
        return (labels != IGNORE_INDEX).nonzero()[:, 1].float().mean().item()
    assert mean_answer_position(0.01) < 0.7 * mean_answer_position(1.0)


@pytest.mark.parametrize('seq_len, kv_pairs, vocab', [(63, 4, 8192), (64, 17, 8192), (64, 4, 64)])
def test_rejects_impossible_settings(seq_len, kv_pairs, vocab):
    with pytest.raises(ValueError):
        multiquery_ar(2, seq_len, kv_pairs, vocab)


@pytest.mark.parametrize('kind', ['metala', 'attention'])
def test_loss_counts_answer_positions_only(mqar_script, kind):
    torch.manual_seed(0)
    model = mqar_script.build_model(kind, 64, 64, 1, 32).eval()
    inputs, labels = multiquery_ar(4, 32, 4, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        answer, targets = mqar_script.answer_logits(model, inputs, labels)
        logits = model(inputs).logits
    assert answer.shape == (16, 64) and answer.dtype == torch.float32
    torch.testing.assert_close(F.cross_entropy(answer, targets),
                               F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100))
    answers = labels != IGNORE_INDEX
    torch.testing.assert_close(answer, logits[answers].float())
    assert torch.equal(targets, labels[answers])


def test_quick_training_lowers_the_loss(mqar_script):
    torch.manual_seed(0)
    model = mqar_script.build_model('metala', 64, 64, 2, 16)
    first, last = mqar_script.train_mqar(model, 16, 2, 64, steps=80, batch=16, lr=1e-2, device=torch.device('cpu'))
    assert last < first - 0.5, (first, last)
    assert 0.0 <= mqar_script.evaluate_mqar(model, 16, 2, 64, 32, torch.device('cpu')) <= 1.0
