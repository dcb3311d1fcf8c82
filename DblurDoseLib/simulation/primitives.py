"""Shapes of the anatomical virtual patients in physical millimetres: the voxel-centre grid, smooth random
deformations and fields, superellipsoid blobs and tapered tubes (level < 1 inside), orthonormal frames."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

F32 = np.float32


class Grid:
    """Voxel-centre coordinates (mm) of a grid centred on (0, 0, 0)."""

    def __init__(self, shape, spacing):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        nz, ny, nx = self.shape
        sx, sy, sz = self.spacing
        self.origin = (-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz)
        self.x = (self.origin[0] + np.arange(nx) * sx).astype(F32)
        self.y = (self.origin[1] + np.arange(ny) * sy).astype(F32)
        self.z = (self.origin[2] + np.arange(nz) * sz).astype(F32)

    def box(self, lo, hi):
        """Slices and broadcastable coordinates (Z, Y, X) of the voxels inside [lo, hi] (x, y, z mm)."""
        sl = []
        for axis, (coords, s, o) in enumerate(zip((self.x, self.y, self.z), self.spacing, self.origin)):
            n = coords.size
            i0 = max(int(math.ceil((lo[axis] - o) / s - 1e-6)), 0)
            i1 = min(int(math.floor((hi[axis] - o) / s + 1e-6)) + 1, n)
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        sx, sy, sz = sl
        return ((sz, sy, sx), self.z[sz][:, None, None], self.y[sy][None, :, None], self.x[sx][None, None, :])


class Modes:
    """A smooth random scalar field: a few random plane waves, zero mean, unit variance."""

    def __init__(self, rng, n=6, lam=(40.0, 120.0)):
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        self.k = d * (2 * np.pi / rng.uniform(lam[0], lam[1], n))[:, None]
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amp = rng.normal(size=n) * math.sqrt(2.0 / n)

    def __call__(self, X, Y, Z):
        out = None
        for (kx, ky, kz), ph, a in zip(self.k, self.phase, self.amp):
            term = np.cos(F32(kx) * X + F32(ky) * Y + F32(kz) * Z + F32(ph)) * F32(a)
            out = term if out is None else out + term
        return out


def frame(e1, e2=None):
    """Orthonormal frame (columns) with first axis along e1 (and second near e2)."""
    e1 = np.asarray(e1, float)
    e1 = e1 / np.linalg.norm(e1)
    if e2 is None:
        e2 = np.array([1.0, 0, 0]) if abs(e1[0]) < 0.9 else np.array([0, 1.0, 0])
    e2 = np.asarray(e2, float) - np.dot(e2, e1) * e1
    e2 /= np.linalg.norm(e2)
    e3 = np.cross(e1, e2)
    return np.stack([e1, e2, e3], axis=1)


def random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


class Blob:
    """Deformed superellipsoid: level < 1 inside. ``rot`` columns are the local axes in LPS."""

    def __init__(self, centre, axes, rot=None, p=2.0, eps=0.0, modes=None):
        self.c = np.asarray(centre, float)
        self.axes = np.asarray(axes, float)
        self.rot = None if rot is None else np.asarray(rot, float)
        self.p = float(p)
        self.eps = float(eps) if modes is not None else 0.0
        self.modes = modes

    def local(self, X, Y, Z):
        dx, dy, dz = X - F32(self.c[0]), Y - F32(self.c[1]), Z - F32(self.c[2])
        if self.rot is None:
            return dx, dy, dz
        r = self.rot.astype(F32)
        return (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
                r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
                r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz)

    def level(self, X, Y, Z):
        u, v, w = self.local(X, Y, Z)
        a, b, c = (F32(t) for t in self.axes)
        if self.p == 2.0:
            q = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
        else:
            p = F32(self.p)
            q = (np.abs(u / a) ** p + np.abs(v / b) ** p + np.abs(w / c) ** p) ** F32(1 / self.p)
        if self.eps:
            q = q / (F32(1) + F32(self.eps) * self.modes(X, Y, Z))
        return q

    def half_extent(self):
        r = np.eye(3) if self.rot is None else self.rot
        if self.p == 2.0:
            ext = np.sqrt(((r * self.axes[None, :]) ** 2).sum(axis=1))
        else:
            ext = (np.abs(r) * self.axes[None, :]).sum(axis=1)
        return ext * (1 + 3 * self.eps) + 1.0

    def bbox(self, scale=1.0):
        e = self.half_extent() * scale
        return self.c - e, self.c + e


class Tube:
    """Chain of cone-capsules through ``points`` (n, 3) with ``radii`` (n,): level < 1 inside."""

    def __init__(self, points, radii, eps=0.0, modes=None):
        self.p = np.asarray(points, float)
        self.r = np.asarray(radii, float)
        self.eps = float(eps) if modes is not None else 0.0
        self.modes = modes

    def bbox(self, scale=1.0):
        m = self.r.max() * scale * (1 + 3 * self.eps) + 1.0
        return self.p.min(axis=0) - m, self.p.max(axis=0) + m

    def _segment(self, i, X, Y, Z):
        a, b = self.p[i], self.p[i + 1]
        ra, rb = self.r[i], self.r[i + 1]
        d = b - a
        L2 = float(d @ d) or 1e-9
        dx, dy, dz = X - F32(a[0]), Y - F32(a[1]), Z - F32(a[2])
        t = np.clip((dx * F32(d[0]) + dy * F32(d[1]) + dz * F32(d[2])) / F32(L2), 0, 1)
        ex, ey, ez = dx - t * F32(d[0]), dy - t * F32(d[1]), dz - t * F32(d[2])
        return np.sqrt(ex * ex + ey * ey + ez * ez) / (F32(ra) + t * F32(rb - ra))

    def level(self, X, Y, Z):
        shape = np.broadcast_shapes(np.shape(X), np.shape(Y), np.shape(Z))
        best = np.full(shape, np.inf, dtype=F32)
        grid = (np.ndim(X) == 3 and np.shape(X)[:2] == (1, 1) and np.shape(Y)[0] == 1 and np.shape(Y)[2] == 1
                and np.shape(Z)[1:] == (1, 1))
        for i in range(len(self.p) - 1):
            if not grid:
                np.minimum(best, self._segment(i, X, Y, Z), out=best)
                continue
            m = max(self.r[i], self.r[i + 1]) * 1.6 + 2.0
            lo = np.minimum(self.p[i], self.p[i + 1]) - m
            hi = np.maximum(self.p[i], self.p[i + 1]) + m
            sl = []
            for c, l_, h_ in ((Z.ravel(), lo[2], hi[2]), (Y.ravel(), lo[1], hi[1]), (X.ravel(), lo[0], hi[0])):
                sl.append(slice(int(np.searchsorted(c, l_)), int(np.searchsorted(c, h_, side="right"))))
            if any(s_.stop <= s_.start for s_ in sl):
                continue
            sz, sy, sx = sl
            sub = best[sz, sy, sx]
            np.minimum(sub, self._segment(i, X[:, :, sx], Y[:, sy, :], Z[sz]), out=sub)
        if self.eps:
            near = best < F32(1 + 3 * self.eps)
            if grid:
                iz, iy, ix = np.nonzero(near)
                pts = (X.ravel()[ix], Y.ravel()[iy], Z.ravel()[iz])
            else:
                Xb, Yb, Zb = np.broadcast_arrays(X, Y, Z)
                pts = (Xb[near], Yb[near], Zb[near])
            best[near] = best[near] / (F32(1) + F32(self.eps) * self.modes(*pts))
        return best


class Field:
    """A smooth Gaussian random field on a fixed physical lattice, sampled by linear interpolation."""

    def __init__(self, rng, lo, hi, step, sigma_mm):
        self.lo = np.asarray(lo, float)  # x, y, z
        self.step = float(step)
        n = (np.ceil((np.asarray(hi, float) - self.lo) / step).astype(int) + 2)
        white = rng.standard_normal((n[2], n[1], n[0]), dtype=F32)
        f = ndimage.gaussian_filter(white, sigma_mm / step, mode="wrap")
        f /= F32(f.std() + 1e-12)
        self.f = f

    def _axis(self, coords, axis):
        n = self.f.shape[2 - axis]
        t = np.clip((np.asarray(coords, float) - self.lo[axis]) / self.step, 0, n - 1.000001)
        i0 = np.floor(t).astype(np.intp)
        return i0, (t - i0).astype(F32)

    def sample_grid(self, Z, Y, X):
        """Field on the box spanned by 1-D (or broadcastable) coordinate arrays Z, Y, X."""
        iz, wz = self._axis(np.ravel(Z), 2)
        iy, wy = self._axis(np.ravel(Y), 1)
        ix, wx = self._axis(np.ravel(X), 0)
        z0, z1 = iz.min(), iz.max() + 2
        y0, y1 = iy.min(), iy.max() + 2
        f = self.f[z0:z1, y0:y1]
        iz, iy = iz - z0, iy - y0
        a = f[:, :, ix] * (1 - wx) + f[:, :, ix + 1] * wx
        a = a[:, iy, :] * (1 - wy)[:, None] + a[:, iy + 1, :] * wy[:, None]
        out = a[iz]
        out *= (1 - wz)[:, None, None]
        out += a[iz + 1] * wz[:, None, None]
        return out

    def sample_points(self, z, y, x):
        t = [np.clip((np.asarray(c, float) - self.lo[ax]) / self.step, 0, self.f.shape[2 - ax] - 1)
             for c, ax in ((z, 2), (y, 1), (x, 0))]
        return ndimage.map_coordinates(self.f, t, order=1, mode="nearest")


def smin(a, b, k):
    """Polynomial smooth minimum (k in level units)."""
    h = np.clip(F32(0.5) + F32(0.5 / k) * (b - a), 0, 1)
    return b + (a - b) * h - F32(k) * h * (1 - h)


def _sphere_dirs():
    d = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)], float)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


SPHERE_DIRS = _sphere_dirs()
