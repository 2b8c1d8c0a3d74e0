"""scripts/compare_runs.py on two hand-written run logs."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'compare_runs.py'


def _run(folder, model, top1s):
    folder.mkdir()
    (folder / 'config.yaml').write_text(f'model: {model}\n')
    records = [dict(event='train', epoch=1, update=u, loss=2.0 - u / 10, lr=1e-3, img_per_s=100.0) for u in (1, 2)]
    records += [dict(event='epoch', epoch=e + 1, update=2 * (e + 1), train_img_per_s=100.0 * (e + 1),
                     val_top1=top1, val_loss=1.0 / (e + 1), best_top1=max(top1s[:e + 1]),
                     best_epoch=top1s.index(max(top1s[:e + 1])) + 1, peak_mem_gib=None)
                for e, top1 in enumerate(top1s)]
    (folder / 'log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_table_and_plot(tmp_path):
    _run(tmp_path / 'a', 'metala_vit_t', [50.0, 70.0, 65.0])
    _run(tmp_path / 'b', 'deit_tiny_patch16_224', [40.0, 60.0])
    out = tmp_path / 'cmp.md'
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / 'a'), str(tmp_path / 'b'), '--out', str(out)],
                   check=True, capture_output=True)
    text = out.read_text()
    assert '| a | metala_vit_t | 3 | 70.00 (2) | 65.00 | 0.3333 | 200 | n/a |' in text
    assert '| b | deit_tiny_patch16_224 | 2 | 60.00 (2) | 60.00 | 0.5000 | 150 | n/a |' in text
    assert out.with_suffix('.png').stat().st_size > 0
