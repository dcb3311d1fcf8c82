"""One anatomical virtual patient drawn from a seed (:class:`Patient`): demographics, spine, body outline,
organs (sized to volumes drawn per patient), uptake and lesions, as functions of physical position.

Every random draw happens here, in a fixed order, from ``default_rng([seed, 20220117])``; painting
(:mod:`.painting`) only evaluates the shapes on a grid, so any grid gives the same patient.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DblurDoseError
from .anatomy import (
    _LESION_CLASS_TARGETS_ML,
    BONE_LESION_HU,
    EFFECTIVE_HALF_LIFE_H,
    LESION_CONTRAST,
    LESION_COUNT,
    LESION_SITES,
    LESION_SIZE_CLASSES_ML,
    LESIONS_PER_CLASS,
    SMALL_LESION_ML,
    SMALL_LESION_SHARE,
    STANDARD_FIELD_MM,
    UPTAKE_DAY1,
    VERTEBRA_LEVELS,
)
from .primitives import F32, SPHERE_DIRS, Blob, Field, Modes, Tube, frame, random_rotation, smin

_VERT_PITCH = np.array([18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30, 34, 35, 36, 36, 35], float)
_VERT_AX = np.interp(np.arange(17), [0, 11, 12, 16], [14, 20, 21, 25])  # half width (x)
_VERT_AY = np.interp(np.arange(17), [0, 11, 12, 16], [9.5, 14.5, 15, 17])  # half depth (y)
_VERT_HEIGHT_FRAC = np.where(np.arange(17) < 12, 0.78, 0.75)


#: :meth:`Patient._lesion_centre`'s answer when no vertebra has room for a bone lesion
_NO_ROOM = object()


class Patient:
    """All random draws for one seed, and the anatomy as functions of physical position."""

    NTH = 2048
    ZT0, DZT, NZT = -330.0, 2.0, 331

    def __init__(self, seed: int, lesion_classes: bool = False):
        self.seed = int(seed)
        self.lesion_classes = bool(lesion_classes)
        rng = np.random.default_rng([self.seed, 20220117])
        self.rng = rng
        self._draw_demographics(rng)
        self._draw_spine(rng)
        self._draw_body(rng)
        self._build_tables()
        self._draw_organs(rng)
        self._draw_uptake(rng)
        self._draw_lesions(rng)

    # -- demographics ---------------------------------------------------------------------
    def _draw_demographics(self, rng):
        self.sex = "M" if rng.random() < 9 / 14 else "F"
        self.age = int(rng.integers(35, 89))
        if self.sex == "M":
            self.height = float(np.clip(rng.normal(176, 7), 160, 195))
        else:
            self.height = float(np.clip(rng.normal(163, 6), 150, 180))
        bmi = float(np.clip(rng.normal(25.5, 4.0), 18.0, 35.0))
        self.weight = float(np.clip(bmi * (self.height / 100) ** 2, 48.0, 102.0))
        self.bmi = self.weight / (self.height / 100) ** 2
        self.hf = self.height / 175.0  # skeletal / organ length scale

    # -- spine ----------------------------------------------------------------------------
    def _draw_spine(self, rng):
        hf = self.hf
        pitch = _VERT_PITCH * hf * rng.uniform(0.95, 1.05)
        z0 = rng.normal(0.0, 10.0)  # T12/L1 disc: the field is centred on liver and kidneys
        zc = np.zeros(17)
        zc[12] = z0 - pitch[12] / 2  # L1
        for i in range(13, 17):
            zc[i] = zc[i - 1] - (pitch[i - 1] + pitch[i]) / 2
        zc[11] = z0 + pitch[11] / 2  # T12
        for i in range(10, -1, -1):
            zc[i] = zc[i + 1] + (pitch[i + 1] + pitch[i]) / 2
        self.vz = zc
        self.vpitch = pitch
        self.vheight = pitch * _VERT_HEIGHT_FRAC
        bone = rng.uniform(0.93, 1.08) * (1.05 if self.sex == "M" else 0.95)
        self.vax = _VERT_AX * hf * bone
        self.vay = _VERT_AY * hf * bone
        self.lordosis = rng.uniform(6, 14)
        self.kyphosis = rng.uniform(4, 12)

    def level_z(self, name):
        return float(self.vz[VERTEBRA_LEVELS.index(name)])

    def ax_of(self, z):
        """Vertebral-body half-width (mm) at height z, interpolated between levels."""
        return np.interp(np.asarray(z, float), self.vz[::-1], self.vax[::-1])

    def ay_of(self, z):
        """Vertebral-body half-depth (mm) at height z."""
        return np.interp(np.asarray(z, float), self.vz[::-1], self.vay[::-1])

    # -- body outline ---------------------------------------------------------------------
    def _draw_body(self, rng):
        area = 56300.0 * (self.weight / self.height) / 0.4
        ratio = 1.45 - 0.2 * np.clip((self.bmi - 20) / 14, 0, 1) + (0.06 if self.sex == "F" else 0.0)
        ratio += rng.normal(0, 0.04)
        a0 = math.sqrt(area * ratio / math.pi)
        b0 = a0 / ratio
        belly = float(np.clip((self.bmi - 24) / 10, 0, 1)) * (1.0 if self.sex == "M" else 0.5)
        self.a0, self.b0 = a0, b0
        self.b_ant0 = b0 * (1.02 + 0.08 * belly)
        self.b_post0 = b0 * (0.98 - 0.08 * belly)
        zL5, zL3, zL1 = (self.level_z(n) for n in ("L5", "L3", "L1"))
        zT11, zT8 = self.level_z("T11"), self.level_z("T8")
        self.kz = np.array([zL5 - 80, zL5, zL3, zL1, zT11, zT8, zT8 + 140])
        if self.sex == "M":
            ka = [1.05, 1.02, 1.0, 1.0, 1.02, 1.05, 1.07]
        else:
            ka = [1.16, 1.09, 1.0, 0.98, 0.99, 1.02, 1.04]
        kb_ant = [0.93, 0.97, 1.0, 0.98, 0.93, 0.94, 0.98]
        kb_post = [1.02, 1.01, 1.0, 1.0, 1.01, 1.03, 1.05]
        jitter = lambda k: np.asarray(k) * (1 + rng.normal(0, 0.012, len(k)))  # noqa: E731
        self.ka, self.kb_ant, self.kb_post = jitter(ka), jitter(kb_ant), jitter(kb_post)
        self.p_ant = rng.uniform(2.0, 2.4)
        self.p_post = rng.uniform(2.6, 3.4)
        # angular harmonics of the outline, slowly varying with z
        self.harm = [(m, rng.normal(0, 0.010), rng.normal(0, 0.008), rng.uniform(0, 2 * np.pi),
                      rng.uniform(200, 400), rng.uniform(0, 2 * np.pi)) for m in (2, 3, 4, 5)]
        # fat and muscle layers
        tf = np.clip(3.0 + 1.5 * (self.bmi - 18.0), 3.0, 40.0)
        self.fat0 = tf * (1.2 if self.sex == "F" else 0.9) * rng.uniform(0.85, 1.15)
        self.belly = belly
        self.mus0 = (1.1 if self.sex == "M" else 0.9) * self.hf * rng.uniform(0.9, 1.1)
        self.d_back_t = 62.0 * self.hf * rng.uniform(0.95, 1.05)
        self.d_back_l = 72.0 * self.hf * rng.uniform(0.95, 1.05)
        want_arms = rng.random() < 0.3
        self.arm_r = 40.0 + 1.5 * (self.bmi - 20.0)
        self.arm_y = rng.uniform(-10, 20)
        self.arm_gap = rng.uniform(5, 20)
        zs = np.linspace(-STANDARD_FIELD_MM[2] / 2, STANDARD_FIELD_MM[2] / 2, 41)
        self.arm_x_out = float(self.a_of(zs).max()) + self.arm_gap + 2 * self.arm_r + 3
        self.arm_x_in = float(self.a_of(zs).min()) + self.arm_gap - 3
        # arms at the sides only when they fit in the field (arms up otherwise, as usual in SPECT/CT)
        self.arms_down = bool(want_arms and self.arm_x_out < STANDARD_FIELD_MM[0] / 2 - 5)

    def a_of(self, z):
        return self.a0 * np.interp(z, self.kz, self.ka)

    def b_ant_of(self, z):
        return self.b_ant0 * np.interp(z, self.kz, self.kb_ant)

    def b_post_of(self, z):
        return self.b_post0 * np.interp(z, self.kz, self.kb_post)

    def thorax_of(self, z):
        """0 in the abdomen, 1 in the chest (smooth, around the xiphoid/T10)."""
        zT10 = self.level_z("T10")
        return np.clip((np.asarray(z, float) - (zT10 - 20)) / 40.0, 0, 1)

    def fat_of(self, z, c, s):
        hips = np.clip((self.level_z("L4") - np.asarray(z, float)) / 60.0, 0, 1)
        zf = 1.0 - 0.3 * self.thorax_of(z) + hips * (0.5 if self.sex == "F" else 0.15)
        ang = 1.0 + (0.25 + 0.5 * self.belly) * np.maximum(-s, 0) - 0.45 * np.maximum(s, 0)
        return self.fat0 * zf * ang

    def mus_of(self, z, c, s):
        t = 10.0 + 12.0 * np.maximum(s, 0) ** 2 + 4.0 * self.thorax_of(z)
        return t * self.mus0

    def y_vb_of(self, z):
        """y (mm) of the vertebral-body centre line at z (posterior body surface minus fat and back depth)."""
        z = np.asarray(z, float)
        th = self.thorax_of(z)
        d_back = self.d_back_t * th + self.d_back_l * (1 - th)
        zL4 = self.level_z("L4")
        curve = -self.lordosis * np.exp(-(((z - zL4) / 70.0) ** 2)) + self.kyphosis * np.clip((z - self.level_z("T11")) / 100, 0, 1)
        return self.b_post_of(z) - self.fat_of(z, 0.0, 1.0) - d_back + curve

    def _outline(self, z, c, s):
        a = self.a_of(z)
        w = 0.5 * (1 + np.tanh(s / 0.2))
        b = self.b_ant_of(z) * (1 - w) + self.b_post_of(z) * w
        p = self.p_ant * (1 - w) + self.p_post * w
        r = 1.0 / ((np.abs(c) / a) ** p + (np.abs(s) / b) ** p) ** (1.0 / p)
        th = np.arctan2(s, c)
        h = 1.0
        for m, c0, c1, ph, lam, psi in self.harm:
            h = h + (c0 + c1 * np.cos(2 * np.pi * z / lam + psi)) * np.cos(m * th + ph)
        return r * h

    def _build_tables(self):
        z = (self.ZT0 + np.arange(self.NZT) * self.DZT)[:, None]
        th = ((np.arange(self.NTH) + 0.5) / self.NTH * 2 * np.pi - np.pi)[None, :]
        c, s = np.cos(th), np.sin(th)
        rb = self._outline(z, c, s)
        rm = rb - self.fat_of(z, c, s)
        rc = rm - self.mus_of(z, c, s)
        # posterior notch: the spine and paraspinal muscles lie outside the body cavity
        iy = np.argmin(np.abs(th[0] - np.pi / 2))
        y_front = self.y_vb_of(z[:, 0]) - self.ay_of(z[:, 0]) - 2.0
        depth = np.maximum(rc[:, iy] - y_front, 0.0)
        width = (self.ax_of(z[:, 0]) + 16.0) / np.maximum(y_front + 20.0, 40.0)
        notch = depth[:, None] * np.exp(-(((th - np.pi / 2) / width[:, None]) ** 4))
        rc = rc - notch
        self.R = {"body": rb.astype(F32), "muscle": rm.astype(F32), "cavity": rc.astype(F32)}

    # polar helpers (valid for grid boxes and for point arrays)
    def polar(self, X, Y):
        r = np.hypot(X, Y)
        th = np.arctan2(Y, X)
        ib = ((th + np.pi) * (self.NTH / (2 * np.pi))).astype(np.intp) % self.NTH
        return r, ib

    def zindex(self, Z):
        return np.clip(np.rint((np.asarray(Z, float) - self.ZT0) / self.DZT), 0, self.NZT - 1).astype(np.intp)

    def radius(self, layer, Z, ib):
        return self.R[layer][self.zindex(Z), ib]

    def inside(self, layer, X, Y, Z, margin=0.0):
        r, ib = self.polar(X, Y)
        return r < self.radius(layer, Z, ib) - F32(margin)

    # -- organs -----------------------------------------------------------------------------
    def cav_axes(self, z):
        """Cavity half-extents (lateral, anterior, posterior) in mm at height z."""
        R = self.R["cavity"][int(self.zindex(z))].astype(float)
        th = (np.arange(self.NTH) + 0.5) / self.NTH * 2 * np.pi - np.pi
        return (float((R * np.abs(np.cos(th))).max()), float((R * np.maximum(-np.sin(th), 0)).max()),
                float((R * np.maximum(np.sin(th), 0)).max()))

    def z_diaphragm(self, X, Y):
        ac, bca, bcp = self.dia_ac, self.dia_bca, self.dia_bcp
        dy = Y - F32(self.dia_yd)
        ypart = F32(-self.dia_hpost) * (np.maximum(dy, 0) / F32(bcp)) ** 2 - F32(self.dia_hant) * (np.minimum(dy, 0) / F32(bca)) ** 2
        r = F32(self.dia_zR) - F32(self.dia_hx) * ((X - F32(self.dia_xR)) / F32(0.55 * ac)) ** 2
        l_ = F32(self.dia_zL) - F32(self.dia_hx) * ((X - F32(self.dia_xL)) / F32(0.55 * ac)) ** 2
        c = F32(self.dia_zC) - F32(40.0) * ((X - F32(0.1 * ac)) / F32(0.4 * ac)) ** 2
        return np.maximum(np.maximum(r, l_), c) + ypart

    def _draw_organs(self, rng):
        """Organs, vessels, bowel and bones beyond the spine, drawn from ``rng`` in this fixed order."""
        self._draw_diaphragm(rng)
        self._draw_kidneys(rng)
        self._draw_adrenals(rng)
        self._draw_vessels(rng)
        self._draw_liver(rng)
        self._draw_gallbladder(rng)
        self._draw_spleen(rng)
        self._draw_upper_gut(rng)
        self._draw_psoas()
        self._draw_bowel(rng)
        self._draw_breasts(rng)
        self._draw_pelvis(rng)

    def _y_front(self, z) -> float:
        """y (mm) of the vertebral bodies' anterior surface at height z."""
        return float(self.y_vb_of(z) - self.ay_of(z))

    def _draw_diaphragm(self, rng) -> None:
        """The diaphragm domes (right higher than left) and the cavity axes they scale with."""
        zT11 = self.level_z("T11")
        ac, bca, bcp = self.cav_axes(zT11)
        self.dia_ac, self.dia_bca, self.dia_bcp = ac, bca, bcp
        z910 = (self.level_z("T9") + self.level_z("T10")) / 2
        self.dia_zR = z910 + rng.normal(0, 8)
        self.dia_zL = self.dia_zR - rng.uniform(8, 20)
        self.dia_zC = self.dia_zR - rng.uniform(15, 25)
        self.dia_xR, self.dia_xL = -0.45 * ac, 0.45 * ac
        self.dia_yd = -0.15 * bca
        self.dia_hx = rng.uniform(45, 65)
        self.dia_hpost = rng.uniform(60, 80)
        self.dia_hant = rng.uniform(35, 55)

    def _draw_kidneys(self, rng) -> None:
        """Both kidneys (body, hilum, pelvis), each scaled to a volume drawn per patient."""
        hf = self.hf
        male = self.sex == "M"
        zL1 = self.level_z("L1")
        self.kidneys = {}
        k_target = (rng.uniform(140, 210) if male else rng.uniform(115, 180))
        zk_left = zL1 + rng.normal(0, 8)
        for side, sgn, zk in (("left", 1.0, zk_left), ("right", -1.0, zk_left - rng.uniform(8, 25))):
            target = k_target * rng.uniform(0.92, 1.08) * (1.03 if side == "left" else 0.97)
            axis = [-sgn * rng.uniform(0.15, 0.3), rng.uniform(0.1, 0.3), 1.0]  # upper pole medial, posterior
            hil = math.radians(rng.uniform(20, 40))
            width_dir = [sgn * math.cos(hil), -math.sin(hil), 0.0]  # lateral-anterior; hilum opposite
            rot = frame(axis, width_dir)
            modes = Modes(rng, 5, (50, 120))
            yk = float(self.y_vb_of(zk)) + rng.uniform(8, 20)
            xk = sgn * (float(self.ax_of(zk)) + 48.0 * hf + rng.normal(0, 4))

            def make(s, rot=rot, modes=modes, xk=xk, yk=yk, zk=zk):
                lh = 55.0 * s
                return {"body": Blob([xk, yk, zk], [lh, 0.5 * lh, 0.38 * lh], rot, 2.0, 0.04, modes),
                        "hilum": Blob(np.array([xk, yk, zk]) - rot[:, 1] * 0.5 * lh, [0.38 * lh, 0.28 * lh, 0.22 * lh], rot),
                        "pelvis": Blob(np.array([xk, yk, zk]) - rot[:, 1] * 0.3 * lh, [0.32 * lh, 0.16 * lh, 0.16 * lh], rot),
                        "lh": lh, "rot": rot, "c": np.array([xk, yk, zk])}

            holder = {}
            self._calibrate(lambda s, holder=holder, make=make: holder.__setitem__("k", make(s)),
                            lambda X, Y, Z, holder=holder: self._kidney_inside(holder["k"], X, Y, Z),
                            lambda holder=holder: holder["k"]["body"].bbox(), target)
            self.kidneys[side] = holder["k"]

    def _draw_adrenals(self, rng) -> None:
        """The adrenals, on the upper poles of the kidneys."""
        hf = self.hf
        self.adrenals = {}
        for side, sgn in (("left", 1.0), ("right", -1.0)):
            k = self.kidneys[side]
            top = k["c"] + k["rot"][:, 0] * k["lh"]
            c = [sgn * (float(self.ax_of(top[2])) + 14), top[1] - 12, top[2] + 6]
            self.adrenals[side] = Blob(c, [4.0, 16.0, 13.0] * np.array([1, hf, hf]),
                                        frame([sgn * 0.3, 1.0, 0.4], [1, 0, 0]), 2.0, 0.05, Modes(rng, 3, (20, 40)))

    def _draw_vessels(self, rng) -> None:
        """Aorta, inferior vena cava and the iliac arteries and veins (tubes along the spine)."""
        hf = self.hf
        bca = self.dia_bca
        zT11, zT12, zL1, zL2, zL4, zL5 = (self.level_z(n) for n in ("T11", "T12", "L1", "L2", "L4", "L5"))
        r_ao = (10.0 + 0.05 * (self.age - 35)) * hf
        self.r_ao = r_ao
        ao = []
        for z in (230.0, self.level_z("T10"), zT12, zL2, zL4):
            if z > zT11:
                ao.append([float(self.ax_of(z)) + 0.5 * r_ao, float(self.y_vb_of(z)) - 0.3 * float(self.ay_of(z)), z])
            else:
                ao.append([0.35 * float(self.ax_of(z)), self._y_front(z) - r_ao - 2, z])
        self.aorta = Tube(ao, [r_ao * 1.12, r_ao * 1.05, r_ao, r_ao * 0.92, r_ao * 0.85])
        self.iliac_a = [Tube([ao[-1], [sg * 35 * hf, self._y_front(zL5) - 8, zL5 - 5], [sg * 50 * hf, self._y_front(zL5) - 25, zL5 - 80]],
                              [r_ao * 0.7, r_ao * 0.62, r_ao * 0.58]) for sg in (1, -1)]
        r_ivc = rng.uniform(10, 13) * hf
        ivc = [[-0.9 * float(self.ax_of(zL5)), self._y_front(zL5) - 6, zL5 + 5], [-0.95 * float(self.ax_of(zL4)), self._y_front(zL4) - 8, zL4],
               [-1.0 * float(self.ax_of(zL1)), self._y_front(zL1) - 12, zL1], [-1.1 * float(self.ax_of(zT11)), self._y_front(zT11) - 22, zT11],
               [-25.0, -0.1 * bca, self.dia_zC + 15]]
        self.ivc = Tube(ivc, [r_ivc] * 4 + [r_ivc * 1.3], 0.04, Modes(rng, 3, (40, 80)))
        self.iliac_v = [Tube([ivc[0], [sg * 30 * hf, self._y_front(zL5) + 2, zL5 - 15], [sg * 45 * hf, self._y_front(zL5) - 12, zL5 - 80]],
                              [r_ivc * 0.8, r_ivc * 0.7, r_ivc * 0.65]) for sg in (1, -1)]

    def _draw_liver(self, rng) -> None:
        """The liver's two lobes, scaled so that what remains once kidneys and IVC are painted hits a drawn volume."""
        male = self.sex == "M"
        zT12 = self.level_z("T12")
        ac_l, bca_l, bcp_l = self.cav_axes(zT12)
        self.liver_target = (rng.uniform(1.4, 2.2) if male else rng.uniform(1.15, 1.85)) * 1000 * (self.weight / 75) ** 0.2
        m_liver = Modes(rng, 6, (60, 160))
        tilt = frame([1, rng.normal(0, 0.1), rng.uniform(0.25, 0.5)], [0, 1, 0])  # right lobe tip lowest
        rl_axes = np.array([78.0, 82.0, 85.0]) * rng.uniform(0.93, 1.07, 3)
        ll_axes = np.array([68.0, 40.0, 42.0]) * rng.uniform(0.9, 1.1, 3)
        rl_x, ll_x = -0.42 * ac_l, 0.06 * ac_l + rng.normal(0, 6)
        ll_y = -0.5 * bca_l

        def make_liver(s):
            right = Blob([rl_x, 0.02 * bca_l, self.dia_zR - 72 * s], rl_axes * s, tilt, 2.0, 0.05, m_liver)
            left = Blob([ll_x, ll_y, self.dia_zR - 38 * s], ll_axes * s,
                         frame([math.cos(0.25), -math.sin(0.25), 0.15], [0, 0, 1]), 2.0, 0.05, m_liver)
            return right, left

        self.liver_parts = make_liver(1.0)
        def healthy(X, Y, Z):  # what remains of the liver once kidneys, their fat and the IVC are painted
            m = self.liver_inside(X, Y, Z) & (self.ivc.level(X, Y, Z) > 1)
            for k in self.kidneys.values():
                m &= k["body"].level(X, Y, Z) > 1.22
            return m

        s = self._calibrate(lambda s: setattr(self, "liver_parts", make_liver(s)), healthy,
                            lambda: self._bbox_union(self.liver_parts), self.liver_target)
        self.liver_scale = s

    def _draw_gallbladder(self, rng) -> None:
        """The gallbladder below the liver (absent after cholecystectomy, a quarter of patients)."""
        ac_l, bca_l, _ = self.cav_axes(self.level_z("T12"))
        lo, hi = self._bbox_union(self.liver_parts)
        self.has_gb = rng.random() < 0.75
        gb_c = [-0.28 * ac_l + rng.normal(0, 6), -0.55 * bca_l, lo[2] + 35 + rng.normal(0, 5)]
        self.gb = Blob(gb_c, np.array([14.0, 15.0, 34.0]) * rng.uniform(0.8, 1.2),
                        frame([0.2, -0.5, 1.0]), 2.0, 0.05, Modes(rng, 4, (30, 60)))

    def _draw_spleen(self, rng) -> None:
        """The spleen along the 10th rib, scaled to a drawn volume (what remains beside the left kidney)."""
        male = self.sex == "M"
        ac, bcp = self.dia_ac, self.dia_bcp
        sp_target = (rng.uniform(150, 380) if male else rng.uniform(130, 300))
        sp_modes = Modes(rng, 5, (50, 120))
        sp_c = np.array([0.72 * ac, 0.4 * bcp, self.dia_zL - 62 + rng.normal(0, 6)])
        sp_rot = frame([0.25, -0.5, -0.85], [0.8, 0.55, 0.0])  # long axis along the 10th rib

        def make_spleen(s):
            body = Blob(sp_c, np.array([62.0, 22.0, 40.0]) * s, sp_rot, 2.0, 0.06, sp_modes)
            cut = Blob(sp_c - sp_rot[:, 1] * 42 * s, np.array([48.0, 26.0, 30.0]) * s, sp_rot)
            return body, cut

        self.spleen = make_spleen(1.0)
        def spleen_left(X, Y, Z):  # what remains once the left kidney and its fat are painted
            return self.spleen_inside(X, Y, Z) & (self.kidneys["left"]["body"].level(X, Y, Z) > 1.22)

        self._calibrate(lambda s: setattr(self, "spleen", make_spleen(s)), spleen_left,
                        lambda: self.spleen[0].bbox(), sp_target)

    def _draw_upper_gut(self, rng) -> None:
        """Stomach, pancreas, duodenum, heart and the mediastinal midline."""
        hf = self.hf
        ac, bca, bcp = self.dia_ac, self.dia_bca, self.dia_bcp
        zL1 = self.level_z("L1")
        fill = rng.uniform(0.75, 1.15)
        zLd = self.dia_zL
        yb = lambda f: f * bca  # noqa: E731
        st_pts = [[0.34 * ac, 0.15 * bcp, zLd - 28], [0.36 * ac, -yb(0.25), zLd - 62], [0.24 * ac, -yb(0.55), zLd - 98],
                  [0.02 * ac, -yb(0.62), zLd - 112], [-0.18 * ac, -yb(0.5), zLd - 106]]
        st_r = np.array([32.0, 31.0, 27.0, 20.0, 12.0]) * fill * hf
        self.stomach = Tube(st_pts, st_r, 0.06, Modes(rng, 5, (40, 90)))
        self.stomach_gas = rng.uniform(0, 22)
        pz = zL1 + rng.normal(0, 6)
        self.pancreas = Tube([[-0.3 * ac, self._y_front(pz) - 38, pz - 25], [-0.1 * ac, self._y_front(pz) - 42, pz - 8], [0.12 * ac, self._y_front(pz) - 38, pz],
                               [0.35 * ac, self._y_front(pz) - 18, pz + 10], [0.55 * ac, self._y_front(pz) + 5, pz + 22]],
                              np.array([17.0, 12.0, 11.0, 10.0, 9.0]) * hf, 0.08, Modes(rng, 4, (30, 60)))
        self.duodenum = Tube([[-0.18 * ac, -yb(0.5), zLd - 106], [-0.32 * ac, self._y_front(pz) - 38, pz - 10],
                               [-0.34 * ac, self._y_front(pz) - 30, pz - 60], [0.0, self._y_front(pz - 70) - 28, pz - 75],
                               [0.15 * ac, self._y_front(pz) - 30, pz - 50]], np.array([13.0, 12.0, 12.0, 11.0, 11.0]) * hf)

        self.heart = Blob([0.12 * ac + 10, -0.3 * bca - 5, self.dia_zC + 62 * hf],
                           np.array([72.0, 52.0, 50.0]) * hf * rng.uniform(0.92, 1.08),
                           frame([0.6, -0.5, -0.6], [0.5, 0.8, 0.0]), 2.0, 0.04, Modes(rng, 4, (60, 120)))
        self.x_med = 8.0 + rng.normal(0, 3)

    def _draw_psoas(self) -> None:
        """Both psoas muscles (no random draws)."""
        hf = self.hf
        male = self.sex == "M"
        zT12, zL3, zL5 = (self.level_z(n) for n in ("T12", "L3", "L5"))
        self.psoas = [Tube([[sg * (float(self.ax_of(zT12)) + 4), float(self.y_vb_of(zT12)) + 2, zT12],
                             [sg * (float(self.ax_of(zL3)) + 14), float(self.y_vb_of(zL3)), zL3],
                             [sg * (float(self.ax_of(zL5)) + 24), float(self.y_vb_of(zL5)) - 14, zL5 - 40]],
                            np.array([7.0, 19.0, 25.0]) * hf * (1.1 if male else 0.85)) for sg in (1, -1)]

    def _draw_bowel(self, rng) -> None:
        """The colon frame, the small-bowel zone and the random fields that shape its loops and gas."""
        hf = self.hf
        ac, bca = self.dia_ac, self.dia_bca
        zT11, zT12, zL1, zL2, zL3 = (self.level_z(n) for n in ("T11", "T12", "L1", "L2", "L3"))
        # colon frame (ascending, transverse, descending) and small-bowel zone
        ac_b, bca_b, bcp_b = self.cav_axes(zL3)
        sag = rng.uniform(0, 40)
        col = [[-0.62 * ac_b, -0.25 * bca_b, -260.0], [-0.7 * ac_b, -0.02 * bca_b, zL3],
               [-0.62 * ac_b, -0.25 * bca_b, zL1 - 5], [-0.1 * ac_b, -0.72 * bca_b, zL2 - sag],
               [0.35 * ac_b, -0.6 * bca_b, zL2 - sag * 0.5],
               [0.66 * ac, -0.1 * bca, zT12 + 10], [0.74 * ac_b, 0.12 * bcp_b, zL2], [0.62 * ac_b, -0.1 * bca_b, -260.0]]
        self.colon = Tube(col, np.array([26.0, 24.0, 22.0, 21.0, 21.0, 22.0, 20.0, 19.0]) * hf * rng.uniform(0.85, 1.15),
                           0.08, Modes(rng, 6, (40, 100)))
        self.sb_top = zL2 + rng.uniform(-10, 25)
        self.sb_top_modes = Modes(rng, 4, (80, 200))
        self.f_bowel = Field(rng, [-0.9 * ac_b - 20, -bca_b - 20, -280.0], [0.9 * ac_b + 20, bcp_b + 20, self.sb_top + 60],
                              2.5, 5.5)
        self.f_gas = Field(rng, [-0.95 * ac_b - 30, -bca_b - 30, -280.0], [0.95 * ac_b + 30, bcp_b + 30, zT11 + 40], 4.0, 7.0)
        self.bowel_thr = rng.uniform(-0.5, -0.1)

    def _draw_breasts(self, rng) -> None:
        """Breasts (women only)."""
        self.breasts = []
        if self.sex == "F":
            size = np.clip(0.7 + (self.bmi - 20) * 0.05, 0.6, 1.5) * rng.uniform(0.85, 1.15)
            zb = self.level_z("T6") + rng.uniform(-15, 15)
            for sg in (1, -1):
                x = sg * 0.42 * float(self.a_of(zb))
                y = -float(self.b_ant_of(zb)) * (1 - 0.42 ** self.p_ant) ** (1 / self.p_ant) + 12.0
                self.breasts.append(Blob([x, y, zb], np.array([58.0, 30.0, 52.0]) * size,
                                          frame([sg, 0.35, 0.0], [0, -1, 0]), 2.0, 0.05, Modes(rng, 3, (50, 100))))

    def _draw_pelvis(self, rng) -> None:
        """Iliac wings (curved plates) and the sacrum."""
        hf = self.hf
        male = self.sex == "M"
        zL4, zL5 = self.level_z("L4"), self.level_z("L5")
        # iliac wings: curved plates (arcs of an elliptic cylinder that narrows downward)
        self.z_crest = zL4 + rng.uniform(-5, 15)
        wide = 1.0 if male else 1.1
        self.ilium = [dict(sg=sg, cx=sg * 40.0 * hf, cy=float(self.y_vb_of(zL5)) - 22 * hf,
                           rx=80.0 * hf * wide * rng.uniform(0.95, 1.05), ry=60.0 * hf * rng.uniform(0.95, 1.05))
                      for sg in (1, -1)]
        self.sacrum = Blob([0.0, float(self.y_vb_of(zL5)) + 12, zL5 - self.vpitch[16] / 2 - 45 * hf],
                            np.array([40.0, 45.0, 17.0]) * hf, frame([0, 0.55, 1.0], [1, 0, 0]), 3.0)

    def _bbox_union(self, blobs):
        los, his = zip(*(b.bbox() for b in blobs))
        return np.min(los, axis=0), np.max(his, axis=0)

    def _volume_ml(self, inside, bbox, step=2.5):
        lo, hi = bbox
        axes = [np.arange(lo[i] + step / 2, hi[i], step, dtype=F32) for i in range(3)]
        X, Y, Z = axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]
        return float(np.count_nonzero(inside(X, Y, Z))) * step**3 / 1000.0

    def _calibrate(self, set_scale, inside, bbox, target):
        s = 1.0
        set_scale(s)
        for _ in range(3):
            v = self._volume_ml(inside, bbox())
            if v <= 0:
                s *= 1.3
            else:
                s *= (target / v) ** (1 / 3)
            set_scale(s)
        return s

    # organ membership functions (physical coordinates; grids or point arrays)
    def liver_inside(self, X, Y, Z):
        right, left = self.liver_parts
        q = smin(right.level(X, Y, Z), left.level(X, Y, Z), 0.25)
        m = q < 1
        m &= Z < self.z_diaphragm(X, Y) - F32(6.0)
        m &= self.inside("cavity", X, Y, Z, 2.0)
        return m

    def spleen_inside(self, X, Y, Z):
        body, cut = self.spleen
        m = (body.level(X, Y, Z) < 1) & (cut.level(X, Y, Z) > 1)
        m &= Z < self.z_diaphragm(X, Y) - F32(6.0)
        m &= self.inside("cavity", X, Y, Z, 2.0)
        return m

    def _kidney_inside(self, k, X, Y, Z):
        return (k["body"].level(X, Y, Z) < 1) & (k["hilum"].level(X, Y, Z) > 1)

    def lung_inside(self, X, Y, Z, margin=0.0):
        m = Z > self.z_diaphragm(X, Y) + F32(margin)
        m &= self.inside("cavity", X, Y, Z, margin)
        return m

    # -- uptake -----------------------------------------------------------------------------
    def _draw_uptake(self, rng):
        u = lambda k: float(rng.uniform(*UPTAKE_DAY1[k]))  # noqa: E731
        t = lambda k: float(rng.uniform(*EFFECTIVE_HALF_LIFE_H[k]))  # noqa: E731
        self.c1 = {name: u(name) for name in ("kidney_cortex", "liver", "spleen", "adrenal", "pancreas", "stomach",
                                              "bowel", "blood", "muscle", "lung", "marrow")}
        self.medulla_frac = u("kidney_medulla_fraction")
        self.pelvis_frac = u("kidney_pelvis_fraction")
        self.fat_frac = u("fat_fraction_of_muscle")
        self.necrosis_frac = float(rng.uniform(0.05, 0.15))
        self.teff = {name: t(name) for name in ("kidney", "liver", "spleen", "adrenal", "pancreas", "stomach", "bowel",
                                                "blood", "muscle", "lung", "marrow")}
        # CT numbers
        self.hu_liver = float(np.clip(rng.normal(58, 4) - 1.5 * max(self.bmi - 28, 0), 35, 68))
        self.hu_trab = float(np.clip(310 - 2.2 * (self.age - 35) + rng.normal(0, 20), 170, 330))

    # -- lesions ----------------------------------------------------------------------------
    _SITE_POOL = ("liver", "liver", "liver", "node", "node", "pancreas", "mesentery", "lung", "lung_base", "kidney",
                  "bone")

    def _draw_lesions(self, rng):
        n = int(rng.integers(*LESION_COUNT))
        sites = []
        if rng.random() < 0.85:
            sites.append("liver")
        if rng.random() < 0.4:
            sites.append("lung")
        while len(sites) < n:
            sites.append(self._SITE_POOL[int(rng.integers(len(self._SITE_POOL)))])
        self.lesions = []
        for site in sites:
            les = self._new_lesion(rng, site, self._draw_volume(rng, site))
            if les is not None:
                self.lesions.append(les)
        if self.lesion_classes:  # its own stream: the patient and its other lesions stay as they are
            self._fill_size_classes(np.random.default_rng([self.seed, 20220117, 2]))

    def _draw_volume(self, rng, site: str) -> float:
        """A lesion volume (mL) for ``site``: small (log-uniform 1-10 mL) or log-normal around the site median."""
        _, median, cap = LESION_SITES[site]
        if rng.random() < SMALL_LESION_SHARE:
            vol = math.exp(rng.uniform(*np.log(SMALL_LESION_ML)))
        else:
            vol = math.exp(rng.normal(math.log(median), 1.0))
        return float(np.clip(vol, 1.0, cap))

    def _fill_size_classes(self, rng, max_tries: int = 60):
        """Add lesions until every :data:`LESION_SIZE_CLASSES_ML` class holds :data:`LESIONS_PER_CLASS`."""
        for (lo, hi), target in zip(LESION_SIZE_CLASSES_ML, _LESION_CLASS_TARGETS_ML):
            for tries in range(max_tries + 1):
                if sum(lo <= les["volume_ml"] < hi for les in self.lesions) >= LESIONS_PER_CLASS:
                    break
                if tries == max_tries:
                    raise DblurDoseError(f"seed {self.seed}: no room for {LESIONS_PER_CLASS} lesions of {lo:g}-{hi:g} mL; "
                                         "use another seed or lesion_classes=False")
                vol = math.exp(rng.uniform(*np.log(target)))
                sites = [site for site in self._SITE_POOL if LESION_SITES[site][2] >= vol]
                site = "liver" if rng.random() < 0.5 else sites[int(rng.integers(len(sites)))]
                les = self._new_lesion(rng, site, vol, shrink=False)
                if les is not None and lo <= les["volume_ml"] < hi:
                    self.lesions.append(les)

    def _reference_c1(self, tissue: str) -> float:
        """Day-1 concentration (MBq/mL) of the tissue a lesion's contrast refers to."""
        return self.c1["muscle"] * self.fat_frac if tissue == "fat" else self.c1[tissue]

    def _new_lesion(self, rng, site: str, vol: float, shrink: bool = True) -> dict | None:
        """Place one lesion of about ``vol`` mL at ``site`` and draw its contrast, clearance and CT numbers.

        With ``shrink`` a lesion that does not fit is tried smaller, then (outside the liver) as a
        liver lesion; None when it fits nowhere.
        """
        contrast = float(math.exp(rng.uniform(*np.log(LESION_CONTRAST))))
        teff = float(rng.uniform(*EFFECTIVE_HALF_LIFE_H["lesion"]))
        placed = self._place(rng, site, vol)
        for _attempt in range(3 if shrink else 0):
            if placed is not None:
                break
            vol = max(vol * 0.6, 1.0)
            placed = self._place(rng, site, vol)
        if placed is None and shrink and site != "liver":  # no room there: a liver lesion instead
            site = "liver"
            placed = self._place(rng, site, min(vol, 30.0))
        if placed is None:
            return None
        blob, vol_ml = placed
        necrotic = vol_ml >= 10.0 and rng.random() < 0.5
        nu = float(rng.uniform(0.4, 0.65)) if necrotic else 0.0
        if site == "bone":
            hu = float(rng.uniform(*BONE_LESION_HU))
        else:
            hu = float(rng.uniform(32, 46)) if site == "liver" else float(rng.uniform(35, 48))
        reference = LESION_SITES[site][0]
        return {"site": site, "blob": blob, "volume_ml": vol_ml, "contrast": contrast, "reference": reference,
                "c1": contrast * self._reference_c1(reference), "teff": teff, "necrotic": necrotic, "nu": nu,
                "hu": hu, "hu_nec": float(rng.uniform(12, 25))}

    def _lesion_blob(self, rng, c, vol):
        r = (3 * vol * 1000 / (4 * math.pi)) ** (1 / 3)
        e = np.exp(rng.normal(0, 0.12, 3))
        e /= np.prod(e) ** (1 / 3)
        return Blob(c, r * e, random_rotation(rng), 2.0, 0.06, Modes(rng, 5, (1.5 * r, 4 * r)))

    def _surface_points(self, blob, scale=1.1):
        pts = blob.c + (blob.rot @ (SPHERE_DIRS * blob.axes[None, :] * scale).T).T
        return np.vstack([blob.c[None, :], pts])

    def _inside_organ(self, name, P):
        X, Y, Z = (P[:, i].astype(F32) for i in range(3))
        if name == "liver":
            return self.liver_inside(X, Y, Z)
        if name == "lung":
            return self.lung_inside(X, Y, Z, 5.0) & (self.heart.level(X, Y, Z) > 1.25) & (np.abs(X - F32(self.x_med)) > 22) \
                & (self.aorta.level(X, Y, Z) > 1.6) & ~self._near_spine(X, Y, Z, 12.0)
        if name == "cavity":
            return self.inside("cavity", X, Y, Z, 4.0)
        raise KeyError(name)

    def _near_spine(self, X, Y, Z, margin):
        yv = self.y_vb_of(Z).astype(F32)
        ax = self.ax_of(Z).astype(F32)
        ay = self.ay_of(Z).astype(F32)
        return (np.abs(X) < ax + F32(margin)) & (Y > yv - ay - F32(margin))

    def _clear_of(self, P, strict=True):
        """True when no point of P is inside a major organ/vessel/bone (level checks)."""
        X, Y, Z = (P[:, i].astype(F32) for i in range(3))
        bad = self.liver_inside(X, Y, Z) | self.spleen_inside(X, Y, Z)
        for k in self.kidneys.values():
            bad |= k["body"].level(X, Y, Z) < (1.15 if strict else 1.05)
        if strict:
            for tube in (self.aorta, self.ivc, self.stomach, *self.iliac_a, *self.iliac_v, *self.psoas):
                bad |= tube.level(X, Y, Z) < 1.1
        else:
            for tube in (self.aorta, self.ivc):
                bad |= tube.level(X, Y, Z) < 1.0
            bad |= self.stomach.level(X, Y, Z) < 0.7
        bad |= self.heart.level(X, Y, Z) < 1.1
        bad |= self._near_spine(X, Y, Z, 6.0)
        bad |= Z > self.z_diaphragm(X, Y) - 8
        return not bad.any()

    def _place(self, rng, site, vol):
        """A lesion blob of ``vol`` mL at ``site`` that fits there, and its measured volume; None if none fits."""
        r = (3 * vol * 1000 / (4 * math.pi)) ** (1 / 3)
        zlim = STANDARD_FIELD_MM[2] / 2 - r - 6
        ac, bca, _ = self.cav_axes(self.level_z("L1"))
        for _ in range(200 if site in ("liver", "lung") else 120):
            c, vertebra = self._lesion_centre(rng, site, r, zlim, ac, bca)
            if c is _NO_ROOM:
                return None
            if c is None or abs(c[2]) > zlim:
                continue
            blob = self._lesion_blob(rng, c, vol)
            if not self._fits(site, blob, vertebra):
                continue
            blob.axes = blob.axes * (vol / self._measure(blob)) ** (1 / 3)  # the volume drawn, whatever the deformation
            if self._fits(site, blob, vertebra):
                return blob, self._measure(blob)
        return None

    def _lesion_centre(self, rng, site: str, r: float, zlim: float, ac: float, bca: float):
        """One random lesion centre (x, y, z mm) at ``site`` and its vertebra index (bone only, else None).

        Returns (None, None) for a draw to retry, (``_NO_ROOM``, None) when no vertebra has room.
        """
        if site == "liver":
            lo, hi = self._bbox_union(self.liver_parts)
            return rng.uniform(lo, hi), None
        if site == "lung":
            acl, bcal, bcpl = self.cav_axes(self.level_z("T8"))
            return np.array([rng.uniform(-acl, acl), rng.uniform(-bcal, bcpl), rng.uniform(self.dia_zC - 20, zlim)]), None
        if site == "node":
            kind = rng.integers(3)
            if kind == 0:  # para-aortic / aortocaval
                z = rng.uniform(self.level_z("L3"), self.level_z("T12"))
                return np.array([rng.uniform(-35, 45) * self.hf, float(self.y_vb_of(z) - self.ay_of(z)) - rng.uniform(5, 35),
                                 z]), None
            if kind == 1:  # mesenteric root
                return np.array([rng.uniform(-0.3, 0.35) * ac, rng.uniform(-0.6, -0.15) * bca,
                                 rng.uniform(self.level_z("L4"), self.level_z("L1"))]), None
            # porta hepatis / peripancreatic
            return np.array([rng.uniform(-0.35, 0.1) * ac, rng.uniform(-0.45, -0.1) * bca,
                             rng.uniform(self.level_z("L2"), self.level_z("T12"))]), None
        if site == "lung_base":  # just above the diaphragm, mostly in the posterior recesses
            acl, bcal, bcpl = self.cav_axes(self.dia_zR + 20)
            x, y = rng.uniform(-0.85 * acl, 0.85 * acl), rng.uniform(-0.5 * bcal, 0.9 * bcpl)
            zd = float(self.z_diaphragm(np.array([x], F32), np.array([y], F32))[0])
            return np.array([x, y, zd + 1.1 * r + rng.uniform(6.0, 16.0)]), None
        if site == "kidney":
            return self._beside_kidney(rng, r), None
        if site == "bone":
            i = self._vertebra_for_lesion(rng, r)
            if i is None:
                return _NO_ROOM, None
            zc, h, ax, ay = self.vz[i], self.vheight[i], self.vax[i], self.vay[i]
            z = zc + rng.uniform(-1, 1) * max(h / 2 - r - 2, 0.0)
            return np.array([rng.uniform(-1, 1) * max(ax - r - 2, 0.0) * 0.7,
                             float(self.y_vb_of(z)) + rng.uniform(-1, 1) * max(ay - r - 2, 0.0) * 0.7, z]), i
        if site == "pancreas":
            t = rng.uniform(0.2, 0.9)
            i = min(int(t * (len(self.pancreas.p) - 1)), len(self.pancreas.p) - 2)
            f = t * (len(self.pancreas.p) - 1) - i
            return self.pancreas.p[i] * (1 - f) + self.pancreas.p[i + 1] * f + rng.normal(0, 4, 3), None
        # mesentery / peritoneal
        return np.array([rng.uniform(-0.6, 0.6) * ac, rng.uniform(-0.8, -0.1) * bca,
                         rng.uniform(-STANDARD_FIELD_MM[2] / 2 + r + 10, self.level_z("L2"))]), None

    def _fits(self, site: str, blob: Blob, vertebra: int | None = None) -> bool:
        """True when a lesion ``blob`` at ``site`` (in vertebral body ``vertebra`` for bone) stays where
        it belongs and clear of the other lesions."""
        P = self._surface_points(blob)
        if any(np.linalg.norm(P[0] - other["blob"].c) < (blob.axes.max() + other["blob"].axes.max()) * 1.15 + 4
               for other in self.lesions):
            return False
        if site == "bone":
            return bool(self._inside_vertebral_body(vertebra, P).all())
        if site == "kidney":  # the points, then the deformed shape on a 0.75 mm lattice: outside both kidneys
            return self._beside_kidney_clear(P) and self._volume_ml(
                lambda X, Y, Z: (blob.level(X, Y, Z) < 1) & self._in_kidney_body(X, Y, Z), blob.bbox(), 0.75) == 0
        if site not in ("liver", "lung", "lung_base"):
            return bool(self._inside_organ("cavity", P).all()) and self._clear_of(P, site != "pancreas")
        if not self._inside_organ("lung" if site == "lung_base" else site, P).all():
            return False
        if site == "liver":
            X, Y, Z = (P[:, k].astype(F32) for k in range(3))
            if (self.ivc.level(X, Y, Z) < 1.2).any() or (self.has_gb and (self.gb.level(X, Y, Z) < 1.2).any()):
                return False
            if any((k["body"].level(X, Y, Z) < 1.1).any() for k in self.kidneys.values()):
                return False
        return True

    def _vertebra_for_lesion(self, rng, r: float) -> int | None:
        """Index of a random vertebra (T9-L5, inside the field) whose body can hold a lesion of radius r (mm)."""
        half_field = STANDARD_FIELD_MM[2] / 2
        fits = [i for i in range(VERTEBRA_LEVELS.index("T9"), len(VERTEBRA_LEVELS))
                if abs(self.vz[i]) + self.vheight[i] / 2 < half_field and min(self.vheight[i] / 2, self.vay[i]) > 1.1 * r + 2]
        return fits[int(rng.integers(len(fits)))] if fits else None

    def _inside_vertebral_body(self, i: int, P: np.ndarray) -> np.ndarray:
        """True for points (n, 3 mm) inside the trabecular bone of vertebral body ``i`` (2 mm off its cortex)."""
        X, Y, Z = (P[:, k] for k in range(3))
        ax, ay = self.vax[i], self.vay[i]
        rr = np.sqrt((X / ax) ** 2 + ((Y - self.y_vb_of(Z)) / ay) ** 2)
        return (rr < 1 - 2.0 / ay) & (np.abs(Z - self.vz[i]) < self.vheight[i] / 2 - 2.0)

    def _beside_kidney(self, rng, r: float) -> np.ndarray | None:
        """Centre (mm) of a lesion of radius r just outside a random kidney's surface (0-2 mm gap
        beyond 1.1 r), on its lateral, polar or dorsal/ventral side (not at the hilum)."""
        k = self.kidneys["left" if rng.random() < 0.5 else "right"]
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        if np.dot(d, -k["rot"][:, 1]) > 0.3:  # the hilum faces -rot[:, 1]
            return None
        s = np.linspace(0.0, 1.6 * k["lh"], 321)
        pts = (k["c"][None, :] + s[:, None] * d[None, :]).astype(F32)
        outside = k["body"].level(pts[:, 0], pts[:, 1], pts[:, 2]) >= 1
        if not outside.any():
            return None
        return k["c"] + d * (s[int(np.argmax(outside))] + 1.1 * r + rng.uniform(0.0, 2.0))

    def _in_kidney_body(self, X, Y, Z):
        """True inside either kidney's outline (hilum included), for points or grid boxes in mm."""
        return (self.kidneys["left"]["body"].level(X, Y, Z) < 1) | (self.kidneys["right"]["body"].level(X, Y, Z) < 1)

    def _beside_kidney_clear(self, P: np.ndarray) -> bool:
        """True when the lesion points P (n, 3 mm) are outside both kidneys and clear of the other organs."""
        X, Y, Z = (P[:, i].astype(F32) for i in range(3))
        bad = self.liver_inside(X, Y, Z) | self.spleen_inside(X, Y, Z) | ~self.inside("cavity", X, Y, Z, 2.0)
        bad |= self._in_kidney_body(X, Y, Z)
        for tube in (self.aorta, self.ivc, *self.psoas):
            bad |= tube.level(X, Y, Z) < 1.0
        bad |= self._near_spine(X, Y, Z, 4.0)
        bad |= Z > self.z_diaphragm(X, Y) - 8
        return not bad.any()

    def _measure(self, blob):
        lo, hi = blob.bbox()
        step = max(float((hi - lo).max()) / 48.0, 0.25)
        return self._volume_ml(lambda X, Y, Z: blob.level(X, Y, Z) < 1, (lo, hi), step)
