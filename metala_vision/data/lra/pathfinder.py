"""Pathfinder images (Linsley et al., 2018; Kim et al., 2020) as used by Long Range Arena: a vectorised generator.

Each image shows two long target contours and some short distractor contours. A contour is a chain of short
dashes ("paddles") whose direction turns by a random angle in [-max_turn, max_turn] from one paddle to the next.
Two disks (markers) are drawn: one at the origin of a target contour, the other at the far end of the same
contour (label 1) or of the other target contour (label 0). As in the original generator the two origins lie
seed_distance apart, so the markers' positions alone do not tell the label. Different contours keep `clearance`
pixels of blank between their ink (the default 1.5 > sqrt(2) keeps their pixels from ever being 8-adjacent), so
two contours never touch. Labels are balanced.

A batch of images grows together, with numpy over the batch: each step draws `candidates` paddles per image and
keeps the first that fits (exact segment distances behind a cheap centre-distance bound), taking the previous
paddle back where none does; images whose target contours cannot be completed are redrawn, distractors that
find no room are left out. Rendering draws every paddle and marker as an anti-aliased capsule in a small
window, all images at once. Chunks of images run in parallel processes.
"""
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import ImageTokenDataset, config_digest, publish, resolve_cache_dir

CONTOUR_LENGTHS = {'easy': 6, 'intermediate': 9, 'hard': 14}  # LRA: curv_baseline, curv_contour_length_{9,14}


@dataclass(frozen=True)
class PathfinderConfig:
    """Geometry of generated images; lengths in pixels. Defaults: LRA Pathfinder-32, 'hard'."""
    size: int = 32
    contour_length: int = 14       # paddles in each of the two target contours
    distractor_length: int = 4     # paddles in each distractor contour
    num_distractors: int = 5       # attempted; one that finds no room is left out of that image
    paddle_length: float = 2.0
    paddle_gap: float = 1.0        # blank between consecutive paddles of a contour
    paddle_width: float = 1.0
    marker_radius: float = 1.5
    seed_distance: float = 7.0     # distance between the origins of the two target contours
    max_turn: float = 60.0         # degrees
    clearance: float = 1.5         # blank between the ink of different contours
    candidates: int = 8            # proposals per paddle, checked at once; none fitting takes the last paddle back

    def __post_init__(self):
        marker_ink = self.marker_radius + 0.5
        if self.seed_distance < 2 * marker_ink + self.clearance:
            raise ValueError(f'seed_distance {self.seed_distance} leaves the two origin markers closer than '
                             f'clearance {self.clearance}; it must be >= {2 * marker_ink + self.clearance}')
        if self.size < 2 * self.marker_radius + self.seed_distance + 2:
            raise ValueError(f'size {self.size} is too small for seed_distance {self.seed_distance}')
        if self.contour_length < 1 or self.distractor_length < 1 or self.num_distractors < 0:
            raise ValueError('contour_length and distractor_length must be >= 1, num_distractors >= 0')


def pathfinder_config(size=32, difficulty='hard'):
    """Generator settings for LRA Pathfinder (size 32) or Path-X (size 128) at difficulty easy/intermediate/hard.

    Contour lengths (6/9/14 paddles), distractors (a third of that long; 20 or 35 distractor paddles in all),
    marker radius, stroke width and seed distance follow the settings listed in LRA's Pathfinder data builder;
    the turning range and the clearance are this generator's own. At size 128 the dashes are visibly apart, so
    contours keep 3 px of blank between them (> 2 sqrt(2)): wider than any gap inside a contour.
    """
    if difficulty not in CONTOUR_LENGTHS:
        raise ValueError(f'difficulty must be one of {sorted(CONTOUR_LENGTHS)}, got {difficulty!r}')
    length = CONTOUR_LENGTHS[difficulty]
    distractor_length = length // 3
    if size == 32:
        return PathfinderConfig(contour_length=length, distractor_length=distractor_length,
                                num_distractors=20 // distractor_length)
    if size == 128:
        return PathfinderConfig(size=128, contour_length=length, distractor_length=distractor_length,
                                num_distractors=35 // distractor_length, paddle_length=5.0, paddle_gap=2.5,
                                paddle_width=1.5, marker_radius=3.0, seed_distance=20.0, max_turn=45.0,
                                clearance=3.0)
    raise ValueError(f'presets exist for sizes 32 and 128, got {size}; build a PathfinderConfig directly')


def _cross(u, v):
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _dot(u, v):
    return u[..., 0] * v[..., 0] + u[..., 1] * v[..., 1]


def _point_segment_sq_distance(p, a, b):
    """Squared distance from points p to segments a-b; all [..., 2], broadcast together."""
    ab, ap = b - a, p - a
    t = np.clip(_dot(ap, ab) / np.maximum(_dot(ab, ab), 1e-12), 0.0, 1.0)
    off = ap - t[..., None] * ab
    return _dot(off, off)


def _segment_distance(p, q, a, b):
    """Distance between segments p-q and a-b (0 where they cross); all [..., 2], broadcast together."""
    sq = np.minimum(np.minimum(_point_segment_sq_distance(p, a, b), _point_segment_sq_distance(q, a, b)),
                    np.minimum(_point_segment_sq_distance(a, p, q), _point_segment_sq_distance(b, p, q)))
    crossing = ((_cross(b - a, p - a) * _cross(b - a, q - a) < 0)
                & (_cross(q - p, a - p) * _cross(q - p, b - p) < 0))
    return np.where(crossing, 0.0, np.sqrt(sq))


def _unit(angle):
    return np.stack([np.sin(angle), np.cos(angle)], -1)


class _SceneBatch:
    """Contours of m images under construction, as a fixed table of capsule slots per image.

    A capsule is a segment a-b inked out to distance `ink` (a point for a marker site). Slots: target contour c
    paddle k at c*L + k; the marker sites (origin of target c at 2L + c, its far end at 2L + 2 + c); distractor
    d paddle k at 2L + 4 + d*Ld + k. Contour ids: targets 0, 1; distractor d is 2 + d. Points are (y, x),
    pixel (i, j) being centred at (i, j).
    """

    def __init__(self, m, config, rng):
        cfg = self.cfg = config
        self.rng = rng
        num_slots = 2 * cfg.contour_length + 4 + cfg.num_distractors * cfg.distractor_length
        self.a = np.zeros((m, num_slots, 2))
        self.b = np.zeros((m, num_slots, 2))
        self.mid = np.zeros((m, num_slots, 2), dtype=np.float32)
        self.half = np.zeros((m, num_slots), dtype=np.float32)   # half length
        self.heading = np.zeros((m, num_slots))
        self.ink = np.zeros((m, num_slots), dtype=np.float32)
        self.owner = np.full((m, num_slots), -1)
        self.step = np.zeros((m, num_slots), dtype=np.int64)
        self.valid = np.zeros((m, num_slots), dtype=bool)
        self.alive = np.ones(m, dtype=bool)
        self.line_ink = cfg.paddle_width / 2 + 0.5
        self.marker_ink = cfg.marker_radius + 0.5

    def tip_slot(self, contour, end):
        return 2 * self.cfg.contour_length + 2 * end + contour

    def paddle_slot(self, contour, step):
        cfg = self.cfg
        distractor_base = 2 * cfg.contour_length + 4 + (contour - 2) * cfg.distractor_length
        return np.where(contour < 2, contour * cfg.contour_length, distractor_base) + step

    def _inside(self, p, margin):
        return ((p >= margin) & (p <= self.cfg.size - 1 - margin)).all(-1)

    def _fits(self, rows, contour, step, p, q, ink, margin):
        """Whether capsules p-q [n, K, 2] of `contour` at steps `step` [n] fit in images `rows` [n].

        A capsule fits when it lies `margin` inside the frame and its ink (radius `ink`) keeps `clearance` from
        the ink of other contours and of its own contour's paddles before step - 2. Returns bool [n, K].
        """
        in_use = np.flatnonzero(self.valid[rows].any(0))
        used = in_use[-1] + 1 if len(in_use) else 0                                         # slots [0, used)
        blocking = self.valid[rows, :used] & ((self.owner[rows, :used] != contour)
                                             | (self.step[rows, :used] < step[:, None] - 2))  # [n, S]
        # cheap bound first: capsules whose centres are farther apart than half lengths + reach cannot meet;
        # slots that do not block are moved out of reach
        half = np.sqrt(_dot(q - p, q - p).max(initial=0.0)) / 2
        bound = half + self.half[rows, :used] + ink + self.ink[rows, :used] + self.cfg.clearance   # [n, S]
        mid = np.where(blocking[..., None], self.mid[rows, :used], np.float32(1e6))
        centre = ((p + q) / 2).astype(np.float32)
        dy = centre[:, :, None, 0] - mid[:, None, :, 0]                                     # [n, K, S]
        dx = centre[:, :, None, 1] - mid[:, None, :, 1]
        i, j, s = np.nonzero(dy * dy + dx * dx < (bound * bound)[:, None])
        img = rows[i]
        reach = ink + self.ink[img, s] + self.cfg.clearance
        meets = _segment_distance(p[i, j], q[i, j], self.a[img, s], self.b[img, s]) < reach
        fits = self._inside(p, margin) & self._inside(q, margin)
        fits[i[meets], j[meets]] = False
        return fits

    def _write(self, rows, slot, p, q, ink, contour, step, heading=0.0):
        self.a[rows, slot], self.b[rows, slot], self.ink[rows, slot] = p, q, ink
        self.mid[rows, slot], self.half[rows, slot] = (p + q) / 2, np.sqrt(_dot(q - p, q - p)) / 2
        self.owner[rows, slot], self.step[rows, slot], self.valid[rows, slot] = contour, step, True
        self.heading[rows, slot] = heading

    def place_origins(self):
        """Marker sites at the origins of the two target contours, seed_distance apart."""
        cfg, rng, m = self.cfg, self.rng, len(self.alive)
        margin = cfg.marker_radius
        first = rng.uniform(margin, cfg.size - 1 - margin, (m, 2))
        second = first[:, None] + cfg.seed_distance * _unit(rng.uniform(0, 2 * np.pi, (m, cfg.candidates)))
        inside = self._inside(second, margin)                                               # [m, K]
        self.alive &= inside.any(1)
        second = second[np.arange(m), inside.argmax(1)]
        for contour, origin in enumerate((first, second)):
            self._write(slice(None), self.tip_slot(contour, end=0), origin, origin, self.marker_ink, contour, -1)

    def grow(self, rows, contour, length):
        """Grows `contour` paddle by paddle in images `rows`; returns the rows where it could not be completed.

        A paddle starts paddle_gap after the previous one (a target's first at its origin, a distractor's
        anywhere) and turns from it by at most max_turn (the first: any direction). Each step draws
        `candidates` paddles at once and keeps the first that fits; when none does, the previous paddle is
        taken back, at most 2 * length times.
        """
        cfg, rng, num_cand = self.cfg, self.rng, self.cfg.candidates
        turn = np.deg2rad(cfg.max_turn)
        target = contour < 2
        step = np.zeros(len(rows), dtype=np.int64)
        backtracks = np.zeros(len(rows), dtype=np.int64)
        failed = np.zeros(len(rows), dtype=bool)
        while True:
            idx = np.flatnonzero((step < length) & ~failed)
            if not len(idx):
                return rows[failed]
            img, k = rows[idx], step[idx]
            first = (k == 0)[:, None]
            prev = self.paddle_slot(contour, np.maximum(k - 1, 0))
            heading = np.where(first, rng.uniform(0, 2 * np.pi, (len(idx), num_cand)),
                               self.heading[img, prev][:, None] + rng.uniform(-turn, turn, (len(idx), num_cand)))
            direction = _unit(heading)                                                      # [n, K, 2]
            if target:
                origin = self.a[img, self.tip_slot(contour, end=0)][:, None]
            else:
                origin = rng.uniform(0, cfg.size - 1, (len(idx), num_cand, 2))
            start = np.where(first[..., None], origin, self.b[img, prev][:, None] + cfg.paddle_gap * direction)
            end = start + cfg.paddle_length * direction
            fits = self._fits(img, contour, k, start, end, self.line_ink, cfg.paddle_width / 2)
            if target:  # the far end of a target contour is a marker site
                last = np.flatnonzero(k == length - 1)
                fits[last] &= self._fits(img[last], contour, k[last], end[last], end[last], self.marker_ink,
                                         cfg.marker_radius)
            ok = fits.any(1)
            pick = fits.argmax(1)[ok]
            done, k_done = img[ok], k[ok]
            start, end, heading = (x[ok, pick] for x in (start, end, heading))
            self._write(done, self.paddle_slot(contour, k_done), start, end, self.line_ink, contour, k_done, heading)
            if target:
                closing = k_done == length - 1
                self._write(done[closing], self.tip_slot(contour, end=1), end[closing], end[closing],
                            self.marker_ink, contour, length)
            step[idx[ok]] += 1
            stuck = idx[~ok]
            give_up = (step[stuck] == 0) | (backtracks[stuck] >= 2 * length)
            failed[stuck[give_up]] = True
            back = stuck[~give_up]
            self.valid[rows[back], self.paddle_slot(contour, step[back] - 1)] = False
            step[back] -= 1
            backtracks[back] += 1

    def draw(self):
        """Places the two target contours, then the distractors; images whose targets do not fit die."""
        cfg = self.cfg
        self.place_origins()
        for contour in (0, 1):
            self.alive[self.grow(np.flatnonzero(self.alive), contour, cfg.contour_length)] = False
        rows = np.flatnonzero(self.alive)
        for contour in range(2, 2 + cfg.num_distractors):
            failed = self.grow(rows, contour, cfg.distractor_length)
            self.valid[failed] &= self.owner[failed] != contour  # a distractor without room is left out


def _render(a, b, radius, image_index, num_images, size):
    """Anti-aliased capsules -> uint8 [num_images, size, size].

    Capsule j (segment a[j]-b[j], [C, 2] each, thickness 2*radius[j]) covers a pixel at distance d from the
    segment by clip(radius + 0.5 - d, 0, 1); it is drawn into image image_index[j]; overlaps take the maximum.
    """
    extent = np.abs(b - a).max() + 2 * radius.max() + 1
    window = np.arange(int(np.ceil(extent)) + 2)
    low = np.floor(np.minimum(a, b) - radius[:, None] - 0.5).astype(np.int64)
    ys, xs = low[:, 0, None] + window, low[:, 1, None] + window           # [C, K]
    pixels = np.stack(np.broadcast_arrays(ys[:, :, None], xs[:, None, :]), -1).astype(np.float32)
    dist = np.sqrt(_point_segment_sq_distance(pixels, a[:, None, None].astype(np.float32),
                                              b[:, None, None].astype(np.float32)))
    cover = np.clip(radius[:, None, None].astype(np.float32) + 0.5 - dist, 0.0, 1.0)  # [C, K, K]
    keep = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :] & (cover > 0)
    flat = (image_index[:, None, None] * size + ys[:, :, None]) * size + xs[:, None, :]
    canvas = np.zeros(num_images * size * size, dtype=np.float32)
    np.maximum.at(canvas, flat[keep], cover[keep])
    return np.rint(canvas * 255).astype(np.uint8).reshape(num_images, size, size)


def _draw_layouts(rng, config, n):
    """Contour layouts of n images -> (a, b: paddle segments [n, S, 2], is_paddle bool [n, S],
    tips: marker sites [n, 2, 2, 2] indexed (target contour, origin/far end))."""
    parts, found, success_rate, idle_rounds = [], 0, 0.5, 0
    while found < n:
        # draw enough scenes to finish in about one round: large batches make the per-step overhead small
        scenes = _SceneBatch(int(np.clip(1.2 * (n - found) / success_rate, 64, 4 * n)), config, rng)
        scenes.draw()
        rows = np.flatnonzero(scenes.alive)[:n - found]
        success_rate = max(scenes.alive.mean(), 0.05)
        idle_rounds = 0 if len(rows) else idle_rounds + 1
        if idle_rounds == 10:
            raise RuntimeError(f'no room for the target contours in 10 rounds of scenes; this PathfinderConfig '
                               f'is too crowded: {config}')
        is_paddle = scenes.valid[rows]
        is_paddle[:, [scenes.tip_slot(c, e) for c in (0, 1) for e in (0, 1)]] = False
        tips = np.stack([scenes.a[rows][:, [scenes.tip_slot(c, 0), scenes.tip_slot(c, 1)]] for c in (0, 1)], 1)
        parts.append((scenes.a[rows], scenes.b[rows], is_paddle, tips))
        found += len(rows)
    return tuple(np.concatenate(field) for field in zip(*parts))


def _generate_chunk(args):
    """Chunk `chunk` of a generated set: (images uint8 [n, S, S], labels uint8 [n], markers float32 [n, 2, 2])."""
    config, seed, chunk, n = args
    rng = np.random.default_rng([seed, chunk])
    labels = rng.permutation(np.arange(n) % 2).astype(np.uint8)
    a, b, is_paddle, tips = _draw_layouts(rng, config, n)
    first = rng.integers(0, 2, n)                   # target contour whose origin is marked
    last = np.where(labels == 1, first, 1 - first)  # target contour whose far end is marked
    rows = np.arange(n)
    markers = np.stack([tips[rows, first, 0], tips[rows, last, 1]], 1)                       # [n, 2, 2]
    img, slot = np.nonzero(is_paddle)
    ends = (np.concatenate([a[img, slot], markers.reshape(-1, 2)]),
            np.concatenate([b[img, slot], markers.reshape(-1, 2)]))
    radius = np.concatenate([np.full(len(img), config.paddle_width / 2), np.full(2 * n, config.marker_radius)])
    images = _render(*ends, radius, np.concatenate([img, np.repeat(rows, 2)]), n, config.size)
    return images, labels, markers.astype(np.float32)


def generate_pathfinder(num_images, config=PathfinderConfig(), seed=0, num_workers=None, chunk_size=1000):
    """Balanced Pathfinder images: dict of images uint8 [N, S, S], labels uint8 [N], markers float32 [N, 2, 2].

    markers holds the (y, x) centres of the two drawn markers. Chunk c of chunk_size images draws from a
    generator seeded by (seed, c), so the result does not depend on num_workers (default: all CPU cores;
    1 runs in this process).
    """
    jobs = [(config, seed, c, min(chunk_size, num_images - start))
            for c, start in enumerate(range(0, num_images, chunk_size))]
    if num_workers == 1 or len(jobs) == 1:
        parts = [_generate_chunk(job) for job in jobs]
    else:
        with ProcessPoolExecutor(num_workers) as pool:
            parts = list(pool.map(_generate_chunk, jobs))
    images, labels, markers = (np.concatenate(field) for field in zip(*parts))
    return {'images': images, 'labels': labels, 'markers': markers}


def generate_pathfinder_file(cache_dir=None, config=PathfinderConfig(), seed=0, num_images=200_000,
                             num_workers=None):
    """Generated Pathfinder set as a compressed .npz (images, labels, markers), made once and cached.

    The file is <cache_dir>/pathfinder<size>-seed<seed>-<hash of config and count>.npz; returns its path.
    """
    name = f'pathfinder{config.size}-seed{seed}-{config_digest(config, seed=seed, num_images=num_images)}.npz'
    path = resolve_cache_dir(cache_dir) / name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = generate_pathfinder(num_images, config=config, seed=seed, num_workers=num_workers)
    tmp = path.with_name(f'{path.stem}.tmp-{uuid.uuid4().hex[:8]}.npz')
    np.savez_compressed(tmp, **arrays)
    publish(tmp, path)
    return path


def split_bounds(n):
    """LRA's 80% / 10% / 10% split of n examples in order -> (train_end, val_end)."""
    return round(0.8 * n), round(0.9 * n)


def load_pathfinder_file(path):
    """(train, val, test) ImageTokenDatasets from a generated .npz, split 80/10/10 in order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'generated Pathfinder file not found: {path}')
    with np.load(path) as data:
        if 'images' not in data or 'labels' not in data:
            raise ValueError(f'{path}: expected arrays "images" and "labels", found {sorted(data.files)}')
        images, labels = data['images'], data['labels']
    train_end, val_end = split_bounds(len(labels))
    return (ImageTokenDataset(images[:train_end], labels[:train_end]),
            ImageTokenDataset(images[train_end:val_end], labels[train_end:val_end]),
            ImageTokenDataset(images[val_end:], labels[val_end:]))
