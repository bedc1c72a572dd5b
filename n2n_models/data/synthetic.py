"""Synthetic source: procedural dead-leaves scenes (no files), rendered at a few supersampling
factors and reduced to 32x32 crops like photos."""

from __future__ import annotations

import math
import time

import numpy as np

from .crops import crops, pack_rgb, store, summed_area
from .specs import SIZE, Progress

#: Supersampling factors (inclusive) at which synthetic scenes are rendered.
SYNTHETIC_FACTORS = (2, 4)

LEAVES = 420  # shapes per scene
RADII = (0.6, 24.0)  # shape radius range in output pixels (power law r^-3)


def render_synthetic(rng: np.random.Generator, count: int, f: int) -> np.ndarray:
    """``count`` dead-leaves scenes of (32f, 32f, 3) uint8: overlapping ellipses and rectangles,
    sizes following a scale-invariant r^-3 law, each with a colour, a linear gradient and
    (some) a stripe texture, over a gradient background. The stripes use float32 ``np.sin``,
    whose last bit may differ between CPU instruction sets, so the scenes are bit-identical per
    machine, not across machines."""
    B, R, s = count, SIZE * f, float(f)
    K = LEAVES
    rmin, rmax = RADII
    q = 1.0 - (rmin / rmax) ** 2
    radius = rmin / np.sqrt(1.0 - rng.random(K) * q)  # output pixels; shared by the batch
    is_rect = rng.random(K) < 0.4
    label = np.zeros((B, R, R), np.int16)  # 0 = background, k = shape k (later on top)
    flat_label = label.reshape(-1)
    boff = (np.arange(B) * R)[:, None]
    full = np.arange(R)
    # per-shape, per-image parameters
    cy = rng.random((K, B)).astype(np.float32) * R
    cx = rng.random((K, B)).astype(np.float32) * R
    ea = (radius[:, None] * s * (0.45 + 0.55 * rng.random((K, B)))).astype(np.float32)
    eb = ea * (0.25 + 0.75 * rng.random((K, B))).astype(np.float32)
    th = rng.random((K, B)) * np.pi
    cos, sin = np.cos(th).astype(np.float32), np.sin(th).astype(np.float32)
    for k in range(K):
        h = int(math.ceil(radius[k] * s)) + 1
        if 2 * h + 1 >= R:
            ys = np.broadcast_to(full, (B, R))
            xs = ys
        else:
            win = np.arange(-h, h + 1)
            ys = np.clip(cy[k].astype(np.int64)[:, None] + win, 0, R - 1)
            xs = np.clip(cx[k].astype(np.int64)[:, None] + win, 0, R - 1)
        dy = (ys + np.float32(0.5) - cy[k][:, None]).astype(np.float32)[:, :, None]
        dx = (xs + np.float32(0.5) - cx[k][:, None]).astype(np.float32)[:, None, :]
        c, sn = cos[k][:, None, None], sin[k][:, None, None]
        u = dx * c + dy * sn
        v = dy * c - dx * sn
        ia, ib = (1.0 / ea[k])[:, None, None], (1.0 / eb[k])[:, None, None]
        if is_rect[k]:
            mask = (np.abs(u) * ia < 1) & (np.abs(v) * ib < 1)
        else:
            u *= ia
            v *= ib
            mask = u * u + v * v < 1
        idx = (boff + ys)[:, :, None] * R + xs[:, None, :]
        flat_label[idx[mask]] = k + 1
    # colour parameters per (image, label), label 0 = background; flattened tables
    n = K + 1
    lum = rng.uniform(20, 235, (B, n, 1))
    base = (lum + rng.normal(0, 35, (B, n, 3))).astype(np.float32).reshape(B * n, 3)
    span = np.concatenate([np.full((1,), R / 2.0), radius * s])[None, :]  # px
    grad = rng.normal(0, 1, (B, n, 2)) * (30.0 / span)[:, :, None]
    centre = np.concatenate([np.full((B, 1, 2), R / 2.0), np.stack([cy.T, cx.T], -1)], axis=1)
    period = s * rng.uniform(0.7, 6.0, (B, n))
    ang = rng.random((B, n)) * np.pi
    kvec = np.stack([np.sin(ang), np.cos(ang)], -1) * (2 * np.pi / period)[:, :, None]
    amp = np.where(rng.random((B, n)) < 0.3, rng.uniform(10, 50, (B, n)), 0.0)
    amp[:, 0] = 0.0
    phase = rng.random((B, n)) * 2 * np.pi
    # value(y, x) = base + g.(p - c) + amp * sin(k.(p - c) + phase), p = pixel centre
    const = -(grad * centre).sum(-1) + 0.5 * grad.sum(-1)  # folds in the +0.5 pixel centre
    kphase = phase - (kvec * centre).sum(-1) + 0.5 * kvec.sum(-1)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32).reshape(-1)  # noqa: E731
    gy, gx, gc = f32(grad[..., 0]), f32(grad[..., 1]), f32(const)
    ky, kx, kp, am = f32(kvec[..., 0]), f32(kvec[..., 1]), f32(kphase), f32(amp)
    lab = (label + (np.arange(B, dtype=np.int32) * n)[:, None, None]).reshape(-1)
    pix_y = np.broadcast_to(np.arange(R, dtype=np.float32)[None, :, None], (B, R, R)).reshape(-1)
    pix_x = np.broadcast_to(np.arange(R, dtype=np.float32)[None, None, :], (B, R, R)).reshape(-1)
    shade = gy[lab] * pix_y
    shade += gx[lab] * pix_x
    shade += gc[lab]
    striped = np.flatnonzero(am[lab])
    if len(striped):
        ls = lab[striped]
        shade[striped] += am[ls] * np.sin(ky[ls] * pix_y[striped] + kx[ls] * pix_x[striped] + kp[ls])
    shade += np.float32(0.5)  # round half up via truncation below
    out = base[lab]
    out += shade[:, None]
    np.clip(out, 0, 255.5, out=out)
    return out.astype(np.uint8).reshape(B, R, R, 3)


def crops_from_synthetic(n: int, crop_rng: np.random.Generator, noise_rng: np.random.Generator,
                         n_point: int, progress: Progress, label: str):
    """n synthetic scenes, each rendered at a random factor f in ``SYNTHETIC_FACTORS`` and reduced
    like a photo crop; return (clean, [noisy copies]) as NCHW uint8."""
    fmin, fmax = SYNTHETIC_FACTORS
    f = crop_rng.integers(fmin, fmax + 1, n)
    clean = np.empty((n, 3, SIZE, SIZE), np.uint8)
    noisy = [np.empty((n, 3, SIZE, SIZE), np.uint8) for _ in range(n_point)]
    t0 = time.monotonic()
    done = 0
    for fv in range(fmin, fmax + 1):
        sel = np.flatnonzero(f == fv)
        batch = max(16, (1 << 20) // (SIZE * fv) ** 2)
        for s in range(0, len(sel), batch):
            idx = sel[s:s + batch]
            scenes = render_synthetic(crop_rng, len(idx), fv)  # (g, R, R, 3)
            R = SIZE * fv
            stacked = scenes.reshape(len(idx) * R, R, 3)
            packed = pack_rgb(stacked) if n_point else None
            sat = summed_area(stacked)
            y0 = np.arange(len(idx), dtype=np.int64) * R
            x0 = np.zeros(len(idx), np.int64)
            c, pts = crops(packed, sat, R, y0, x0, fv, n_point, noise_rng)
            store(clean, idx, c, None)
            for k in range(n_point):
                store(noisy[k], idx, pts[k], None)
            done += len(idx)
            if progress and time.monotonic() - t0 > 5:
                progress(f"{label}: {done}/{n} synthetic scenes")
                t0 = time.monotonic()
    return clean, noisy
