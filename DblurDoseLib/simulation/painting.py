"""Painting a :class:`.patient.Patient` onto a CT grid: labels and tissue classes (later wins, in
:data:`.anatomy.PAINT_PRIORITY` order), the CT in HU, and the activity (Bq/mL) of each label and tissue."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .anatomy import LABELS, LESION_LABEL_BASE, TISSUES, VERTEBRA_LABEL_BASE, VERTEBRA_LEVELS
from .patient import Patient
from .primitives import F32, Blob, Grid, frame


class Canvas:
    def __init__(self, grid: Grid):
        self.g = grid
        self.labels = np.zeros(grid.shape, np.int16)
        self.tissue = np.zeros(grid.shape, np.uint8)

    def paint(self, bbox, fn, label, relabel=None):
        """``fn(X, Y, Z)`` -> uint8 tissue codes on the box (0: leave the voxel as it is).

        Voxels get ``label``, or ``relabel[tissue]`` for the tissues listed there."""
        b = self.g.box(*bbox)
        if b is None:
            return
        sl, Z, Y, X = b
        t = fn(X, Y, Z)
        if t is None:
            return
        t = np.broadcast_to(t, (Z.shape[0], Y.shape[1], X.shape[2]))
        m = t > 0
        if not m.any():
            return
        tm = t[m]
        if relabel:
            lab = np.full(tm.shape, label, np.int16)
            for tis, other in relabel.items():
                lab[tm == tis] = other
            self.labels[sl][m] = lab
        else:
            self.labels[sl][m] = label
        self.tissue[sl][m] = tm


def _const(mask, tissue):
    return mask.astype(np.uint8) * np.uint8(tissue)


def _shell(level, inner, t_out, t_in):
    """Two-tissue fill: ``t_out`` where ``level`` >= inner (a shell), ``t_in`` inside it."""
    out = np.where(level < inner, np.uint8(t_in), np.uint8(t_out))
    out[level >= 1] = 0
    return out


def _field_box(g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) corners (x, y, z mm) of a box 1 mm beyond the grid's outer voxel centres."""
    full_lo = np.array([g.x[0], g.y[0], g.z[0]], float) - 1
    full_hi = np.array([g.x[-1], g.y[-1], g.z[-1]], float) + 1
    return full_lo, full_hi


def paint_anatomy(P: Patient, cv: Canvas) -> None:
    """Paint the patient's anatomy (all but the lesions) onto ``cv``, in :data:`.anatomy.PAINT_PRIORITY` order
    (later wins)."""
    r2, ib2 = _paint_body_layers(P, cv)
    _paint_arms(P, cv)
    _paint_breasts(P, cv)
    _paint_thorax(P, cv)
    _paint_bowel(P, cv)
    _paint_abdomen(P, cv)
    _paint_kidneys(P, cv)
    _paint_spine(P, cv)
    _paint_ribs(P, cv, r2, ib2)
    _paint_sternum(P, cv)
    _paint_pelvis(P, cv)


def _paint_body_layers(P: Patient, cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Body fat, wall muscle and visceral fat from the patient's polar outline tables (one gather per layer).

    Returns the in-plane radius (mm) and angle bin of every (y, x) voxel, [y, x], which the ribs reuse."""
    g = cv.g
    T, L = TISSUES, LABELS
    r2, ib2 = P.polar(g.x[None, :], g.y[:, None])  # (ny, nx)
    iz = P.zindex(g.z)
    for layer, lab, tis in (("body", L["fat"], T["fat"]), ("muscle", L["muscle"], T["muscle"]),
                            ("cavity", L["fat"], T["fat"])):
        R = P.R[layer][iz[:, None, None], ib2[None]]
        m = r2[None] < R
        cv.labels[m] = lab
        cv.tissue[m] = tis
        del R, m
    return r2, ib2


def _paint_arms(P: Patient, cv: Canvas) -> None:
    """Arms at the sides (fat, muscle, humerus), when this patient has them down."""
    T, L = TISSUES, LABELS
    sx = cv.g.spacing[0]
    full_lo, full_hi = _field_box(cv.g)
    if P.arms_down:
        for sg in (1, -1):
            def arm(X, Y, Z, sg=sg):
                cx = F32(sg) * (P.a_of(Z).astype(F32) + F32(P.arm_gap + P.arm_r))
                d2 = (X - cx) ** 2 + ((Y - F32(P.arm_y)) * F32(1.15)) ** 2
                out = np.zeros(d2.shape, np.uint8)
                out[d2 < F32(P.arm_r**2)] = T["fat"]
                out[d2 < F32((P.arm_r - 8) ** 2)] = T["muscle"]
                dd = (X - cx) ** 2 + (Y - F32(P.arm_y)) ** 2
                q = np.sqrt(dd) / F32(11.0)
                bone = _shell(q, F32(1 - max(2.0, sx) / 11.0), T["cortical_bone"], T["trabecular_bone"])
                out[bone > 0] = bone[bone > 0]
                return out
            x0, x1 = sorted((sg * P.arm_x_in, sg * P.arm_x_out))
            lo = [x0, P.arm_y - 1.1 * P.arm_r, full_lo[2]]
            hi = [x1, P.arm_y + 1.1 * P.arm_r, full_hi[2]]
            cv.paint((lo, hi), arm, L["muscle"], {T["fat"]: L["fat"], T["cortical_bone"]: L["arm_bones"],
                                                   T["trabecular_bone"]: L["arm_bones"]})


def _paint_breasts(P: Patient, cv: Canvas) -> None:
    """Breasts (women), outside the wall muscle."""
    T, L = TISSUES, LABELS
    for b in P.breasts:
        def breast(X, Y, Z, b=b):
            m = (b.level(X, Y, Z) < 1) & ~P.inside("muscle", X, Y, Z)
            return _const(m, T["breast"])
        cv.paint(b.bbox(), breast, L["fat"])


def _paint_thorax(P: Patient, cv: Canvas) -> None:
    """Lungs (split left/right at the mediastinum), the diaphragm sheet, mediastinal and pericardial fat."""
    g = cv.g
    T, L = TISSUES, LABELS
    full_lo, full_hi = _field_box(cv.g)
    ac_t, bca_t, bcp_t = P.cav_axes(P.dia_zR)
    xs = np.linspace(-ac_t, ac_t, 41, dtype=F32)[None, :]
    ys = np.linspace(-bca_t, bcp_t, 41, dtype=F32)[:, None]
    zd_min = float(P.z_diaphragm(xs, ys).min()) - 10
    thorax_lo = [full_lo[0], full_lo[1], max(full_lo[2], zd_min)]

    def lungs(X, Y, Z):
        return _const(P.lung_inside(X, Y, Z), T["lung"])

    cv.paint((thorax_lo, full_hi), lungs, L["lung_right"])
    b = g.box(thorax_lo, full_hi)
    if b is not None:
        sub = cv.labels[b[0]]
        sub[(sub == L["lung_right"]) & (b[3] >= F32(P.x_med))] = L["lung_left"]

    # diaphragm sheet (muscle) and mediastinal fat
    def diaphragm(X, Y, Z):
        zd = P.z_diaphragm(X, Y)
        m = (Z <= zd + F32(1.0)) & (Z > zd - F32(5.0)) & P.inside("cavity", X, Y, Z)
        return _const(m, T["muscle"])

    cv.paint((thorax_lo, full_hi), diaphragm, L["muscle"])

    def mediastinum(X, Y, Z):
        yv = (P.y_vb_of(Z) - P.ay_of(Z)).astype(F32)
        w = F32(7.0) + F32(20.0) * np.clip((Y + F32(bca_t)) / (yv + F32(bca_t)), 0, 1) ** 2
        m = np.abs(X - F32(P.x_med) - F32(0.3) * (w - F32(7))) < w
        m &= P.lung_inside(X, Y, Z)
        return _const(m, T["fat"])

    cv.paint(([P.x_med - 50, full_lo[1], thorax_lo[2]], [P.x_med + 50, full_hi[1], full_hi[2]]), mediastinum, L["fat"])

    def pericardial(X, Y, Z):
        return _const((P.heart.level(X, Y, Z) < 1.13) & P.lung_inside(X, Y, Z), T["fat"])

    cv.paint(P.heart.bbox(1.15), pericardial, L["fat"])


def _paint_bowel(P: Patient, cv: Canvas) -> None:
    """Small-bowel loops in the lower abdomen, the colon frame, the duodenum."""
    T, L = TISSUES, LABELS
    full_lo, full_hi = _field_box(cv.g)
    fb = P.f_bowel

    def small_bowel(X, Y, Z):
        ztop = F32(P.sb_top) + F32(18.0) * P.sb_top_modes(X, Y, F32(0))
        m = P.inside("cavity", X, Y, Z, 3.0) & (Z < ztop)
        yv = (P.y_vb_of(Z) - P.ay_of(Z)).astype(F32)
        m &= Y < yv - F32(6.0) + F32(0.35) * np.abs(X)
        f = fb.sample_grid(Z, Y, X)
        out = np.zeros(m.shape, np.uint8)
        loop = m & (f > F32(P.bowel_thr))
        out[loop] = T["gi_content"]
        out[loop & (f < F32(P.bowel_thr + 0.35))] = T["gi_wall"]
        return out

    lo = [fb.lo[0], fb.lo[1], full_lo[2]]
    hi = [-fb.lo[0], P.cav_axes(P.level_z("L3"))[2] + 20, P.sb_top + 40]
    cv.paint((lo, hi), small_bowel, L["small_bowel"])

    def colon(X, Y, Z):
        q = P.colon.level(X, Y, Z)
        m = q < 1
        if not m.any():
            return None
        r_in = F32(0.85)
        out = np.zeros(q.shape, np.uint8)
        out[m] = T["gi_wall"]
        lumen = q < r_in
        gas = P.f_gas.sample_grid(Z, Y, X)
        out[lumen] = T["stool"]
        out[lumen & (gas > F32(0.3))] = T["gas"]
        return out

    cv.paint(P.colon.bbox(), colon, L["colon"])

    def duo(X, Y, Z):
        q = P.duodenum.level(X, Y, Z)
        return _shell(q, F32(0.75), T["gi_wall"], T["gi_content"])

    cv.paint(P.duodenum.bbox(), duo, L["small_bowel"])


def _paint_abdomen(P: Patient, cv: Canvas) -> None:
    """Psoas, stomach (with gas), liver, gallbladder, spleen, pancreas, heart and the great vessels."""
    T, L = TISSUES, LABELS
    # --- psoas ---
    for ps in P.psoas:
        cv.paint(ps.bbox(), lambda X, Y, Z, ps=ps: _const(ps.level(X, Y, Z) < 1, T["muscle"]), L["muscle"])

    # --- stomach ---
    y_gas = float(min(P.stomach.p[:, 1] - P.stomach.r * 0.8)) + P.stomach_gas

    def stomach(X, Y, Z):
        q = P.stomach.level(X, Y, Z)
        m = (q < 1) & (Z < P.z_diaphragm(X, Y) - F32(6.0)) & P.inside("cavity", X, Y, Z, 2.0)
        if not m.any():
            return None
        out = np.zeros(q.shape, np.uint8)
        out[m] = T["gi_wall"]
        lumen = m & (q < F32(0.86))
        out[lumen] = T["gi_content"]
        out[lumen & (Y < F32(y_gas))] = T["gas"]
        return out

    cv.paint(P.stomach.bbox(), stomach, L["stomach"])

    # --- liver, gallbladder, spleen, pancreas ---
    cv.paint(P._bbox_union(P.liver_parts), lambda X, Y, Z: _const(P.liver_inside(X, Y, Z), T["liver"]), L["liver"])
    if P.has_gb:
        cv.paint(P.gb.bbox(), lambda X, Y, Z: _const((P.gb.level(X, Y, Z) < 1) & P.inside("cavity", X, Y, Z, 2.0),
                                                      T["bile"]), L["gallbladder"])
    cv.paint(P.spleen[0].bbox(), lambda X, Y, Z: _const(P.spleen_inside(X, Y, Z), T["spleen"]), L["spleen"])
    cv.paint(P.pancreas.bbox(), lambda X, Y, Z: _const(P.pancreas.level(X, Y, Z) < 1, T["pancreas"]), L["pancreas"])

    # --- heart and vessels ---
    def heart(X, Y, Z):
        return _const((P.heart.level(X, Y, Z) < 1) & (Z > P.z_diaphragm(X, Y) + F32(3.0)), T["blood"])

    cv.paint(P.heart.bbox(), heart, L["heart"])
    for tube, lab in ((P.aorta, L["aorta"]), (P.iliac_a[0], L["aorta"]), (P.iliac_a[1], L["aorta"]),
                      (P.ivc, L["inferior_vena_cava"]), (P.iliac_v[0], L["inferior_vena_cava"]),
                      (P.iliac_v[1], L["inferior_vena_cava"])):
        cv.paint(tube.bbox(), lambda X, Y, Z, tube=tube: _const(tube.level(X, Y, Z) < 1, T["blood"]), lab)


def _paint_kidneys(P: Patient, cv: Canvas) -> None:
    """Perirenal fat, then the kidneys (cortex, medullary pyramids, pelvis), then the adrenals."""
    T, L = TISSUES, LABELS
    for side in ("left", "right"):
        k = P.kidneys[side]
        body = k["body"]
        cv.paint(body.bbox(1.3), lambda X, Y, Z, body=body: _const(body.level(X, Y, Z) < 1.22, T["fat"]), L["fat"])

    def kidney_fn(k):
        def fn(X, Y, Z):
            body, hilum, pelvis = k["body"], k["hilum"], k["pelvis"]
            q = body.level(X, Y, Z)
            m = (q < 1) & (hilum.level(X, Y, Z) > 1)
            if not m.any():
                return None
            u, v, w = body.local(X, Y, Z)
            lh = F32(k["lh"])
            out = np.zeros(m.shape, np.uint8)
            out[m] = T["kidney_cortex"]
            # medullary pyramids: a shell between sinus and cortex, split into cells whose
            # separating columns (of Bertin) narrow outward
            rin, rout = F32(0.42), F32(0.8)
            fu = np.mod((u / lh + F32(1)) * F32(2.0), F32(1))  # 4 rows along the long axis
            psi = np.arctan2(w / F32(0.38), v / F32(0.5))
            fp = np.mod((psi + F32(np.pi)) * F32(3 / (2 * np.pi)) + F32(0.25), F32(1))  # 3 columns around
            gap = F32(0.3) - F32(0.24) * np.clip((q - rin) / (rout - rin), 0, 1)
            med = m & (q > rin) & (q < rout) & (np.minimum(fu, 1 - fu) > gap) & (np.minimum(fp, 1 - fp) > gap)
            out[med] = T["kidney_medulla"]
            out[m & (pelvis.level(X, Y, Z) < 1)] = T["kidney_pelvis"]
            return out
        return fn

    for side in ("left", "right"):
        k = P.kidneys[side]
        cv.paint(k["body"].bbox(), kidney_fn(k), L[f"kidney_{side}"])
    for side in ("left", "right"):
        a = P.adrenals[side]
        cv.paint(a.bbox(), lambda X, Y, Z, a=a: _const(a.level(X, Y, Z) < 1, T["adrenal"]), L[f"adrenal_{side}"])


def _paint_sternum(P: Patient, cv: Canvas) -> None:
    """The sternum in the anterior chest wall, above T10."""
    T, L = TISSUES, LABELS
    sx = cv.g.spacing[0]
    full_hi = _field_box(cv.g)[1]
    zx = P.level_z("T10")

    def sternum(X, Y, Z):
        ib_ant = np.full(Z.shape, P.NTH // 4, np.intp)
        yc = -(P.radius("cavity", Z, ib_ant) + F32(7.0))  # in the anterior chest wall
        wx = F32(13.0) * np.clip((Z - F32(zx)) / F32(30.0), F32(0.45), F32(1.0))
        q = np.sqrt((X / wx) ** 2 + ((Y - yc) / F32(6.0)) ** 2)
        m = (q < 1) & (Z > F32(zx))
        return _shell(np.where(m, q, F32(2)), F32(1 - max(1.5, sx) / 6.0), T["cortical_bone"], T["trabecular_bone"])

    bca_top = P.cav_axes(200.0)[1]
    cv.paint(([-20, -bca_top - 60, zx], [20, -bca_top + 10, full_hi[2]]), sternum, L["sternum"])


def _paint_pelvis(P: Patient, cv: Canvas) -> None:
    """Sacrum, iliac wings (curved bone plates) and the iliacus/gluteal muscles beside them."""
    T, L = TISSUES, LABELS
    sx, sy, sz = cv.g.spacing
    full_lo, full_hi = _field_box(cv.g)
    t_cort = max(1.5, (sx * sy * sz) ** (1 / 3))

    def sacrum(X, Y, Z):
        q = P.sacrum.level(X, Y, Z)
        return _shell(q, F32(1 - t_cort / 17.0), T["cortical_bone"], T["trabecular_bone"])

    cv.paint(P.sacrum.bbox(), sacrum, L["sacrum"])
    for il in P.ilium:
        sg, cx, cy, rx0, ry = il["sg"], il["cx"], il["cy"], il["rx"], il["ry"]
        zc = P.z_crest

        def ilium_coords(X, Y, Z, rx0=rx0, ry=ry, cx=cx, cy=cy, sg=sg, zc=zc):
            rx = F32(rx0) * (F32(1) - F32(0.3) * np.clip((F32(zc) - Z) / F32(120.0), 0, 1))
            u = F32(sg) * (X - F32(cx))
            v = Y - F32(cy)
            rho = np.sqrt((u / rx) ** 2 + (v / F32(ry)) ** 2)
            arc = (u > F32(-0.1) * rx) & (v > F32(-0.85 * ry))
            ztop = F32(zc) - F32(25.0) * (v / F32(ry)) ** 2
            return rho, arc, ztop, rx

        def ilium(X, Y, Z, ilium_coords=ilium_coords):
            rho, arc, ztop, rx = ilium_coords(X, Y, Z)
            d = np.abs(rho - F32(1)) * rx  # ~ distance (mm) from the mid-surface of the plate
            half = F32(4.5 * P.hf)
            m = arc & (Z < ztop) & (d < half)
            out = np.zeros(m.shape, np.uint8)
            out[m] = T["trabecular_bone"]
            out[m & (d > half - F32(t_cort))] = T["cortical_bone"]
            return out

        def pelvic_muscles(X, Y, Z, ilium_coords=ilium_coords, sg=sg, cx=cx):
            rho, arc, ztop, rx = ilium_coords(X, Y, Z)
            u = F32(sg) * (X - F32(cx))
            iliacus = (rho > F32(0.72)) & (rho < 1) & (u > F32(0.25) * rx)
            gluteal = (rho >= 1) & (rho < F32(1) + F32(45.0) / rx) & (u > F32(0.3) * rx)
            m = arc & (Z < ztop - F32(8.0)) & (iliacus | gluteal) & P.inside("muscle", X, Y, Z)
            return _const(m, T["muscle"])

        bb = ([min(sg * (cx - 0.2 * rx0), sg * (cx + rx0 + 50)), cy - ry - 50, full_lo[2]],
              [max(sg * (cx - 0.2 * rx0), sg * (cx + rx0 + 50)), cy + ry + 50, zc + 5])
        cv.paint(bb, pelvic_muscles, L["muscle"])
        cv.paint(bb, ilium, L["pelvis"])


def _paint_spine(P: Patient, cv: Canvas):
    g = cv.g
    T, L = TISSUES, LABELS
    sx, sy, sz = g.spacing
    t_xy = max(1.5, sx)
    t_z = max(1.5, sz)
    zlo, zhi = float(g.z[0]) - sz, float(g.z[-1]) + sz
    # spinal canal along the whole field
    rc_of = lambda z: (8.0 + 2.0 * (1 - P.thorax_of(z))) * P.hf  # noqa: E731

    def canal(X, Y, Z):
        yc = (P.y_vb_of(Z) + P.ay_of(Z) + rc_of(Z) + 2.0).astype(F32)
        rc = rc_of(Z).astype(F32)
        return _const(X**2 + ((Y - yc) * F32(1.1)) ** 2 < rc**2, T["csf"])

    yall = P.y_vb_of(np.linspace(zlo, zhi, 50))
    cv.paint(([-20, yall.min() - 5, zlo], [20, yall.max() + 60, zhi]), canal, L["spinal_canal"])

    for i in range(len(VERTEBRA_LEVELS)):
        zc, h, ax, ay = P.vz[i], P.vheight[i], P.vax[i], P.vay[i]
        if zc + P.vpitch[i] < zlo or zc - P.vpitch[i] > zhi:
            continue
        label = VERTEBRA_LABEL_BASE + 1 + i
        yvb = float(P.y_vb_of(zc))
        lumbar = i >= 12

        def body(X, Y, Z, zc=zc, h=h, ax=ax, ay=ay):
            yv = P.y_vb_of(Z).astype(F32)
            rr = np.sqrt((X / F32(ax)) ** 2 + ((Y - yv) / F32(ay)) ** 2)
            dz = np.abs(Z - F32(zc))
            m = (rr < 1) & (dz < F32(h / 2))
            out = np.zeros(m.shape, np.uint8)
            out[m] = T["trabecular_bone"]
            shell = m & ((rr > F32(1 - t_xy / ay)) | (dz > F32(h / 2 - t_z)))
            out[shell] = T["cortical_bone"]
            return out

        cv.paint(([-ax - 2, yvb - ay - 15, zc - h / 2 - 1], [ax + 2, yvb + ay + 15, zc + h / 2 + 1]), body, label)
        # posterior elements: pedicles, lamina ring, spinous and transverse processes
        rc = float(rc_of(zc))
        ycan = yvb + ay + rc + 2.0
        parts = [
            Blob([0.62 * ax, yvb + ay + 5, zc + 2], [4.5, 8.0, 0.32 * h]),
            Blob([-0.62 * ax, yvb + ay + 5, zc + 2], [4.5, 8.0, 0.32 * h]),
            Blob([0.0, ycan + rc + 15, zc - (5 if lumbar else 12)], [4.0, 17.0 * P.hf, 0.35 * h * (1.0 if lumbar else 1.2)],
                  frame([0, 1, -0.15 if lumbar else -0.5], [1, 0, 0])),
        ]
        tp_len = (15.0 if lumbar else 11.0) * P.hf
        for sg in (1, -1):
            tp_dir = [sg, 0.15 if lumbar else 0.6, 0.0]
            parts.append(Blob([sg * (ax * 0.7 + tp_len * 0.9), ycan - (4 if lumbar else -3), zc + 1],
                               [tp_len, 4.0, 5.0], frame(tp_dir, [0, 0, 1])))

        def posterior(X, Y, Z, parts=parts, zc=zc, h=h, ycan=ycan, rc=rc):
            m = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), bool)
            for p in parts:
                m |= p.level(X, Y, Z) < 1
            d = np.sqrt(X**2 + (Y - F32(ycan)) ** 2)
            m |= (d > F32(rc)) & (d < F32(rc + 6.0)) & (Y > F32(ycan - 3)) & (np.abs(Z - F32(zc - 2)) < F32(0.42 * h))
            return _const(m, T["bone_mixed"])

        reach = ax * 0.7 + 2 * tp_len + 6
        cv.paint(([-reach, yvb, zc - h], [reach, ycan + rc + 40 * P.hf, zc + h / 2 + 2]), posterior, label)

        # disc below this vertebra
        if i + 1 < len(VERTEBRA_LEVELS):
            z_top = P.vz[i + 1] + P.vheight[i + 1] / 2
            z_bot = zc - h / 2
            axd, ayd = (ax + P.vax[i + 1]) / 2, (ay + P.vay[i + 1]) / 2

            def disc(X, Y, Z, z_top=z_top, z_bot=z_bot, axd=axd, ayd=ayd):
                yv = P.y_vb_of(Z).astype(F32)
                rr = (X / F32(axd)) ** 2 + ((Y - yv) / F32(ayd)) ** 2
                return _const((rr < 1) & (Z >= F32(z_top)) & (Z <= F32(z_bot)), T["disc"])

            cv.paint(([-axd - 1, yvb - ayd - 15, z_top - 1], [axd + 1, yvb + ayd + 15, z_bot + 1]), disc,
                     L["intervertebral_discs"])


def _paint_ribs(P: Patient, cv: Canvas, r2, ib2):
    """Ribs 3-12 on both sides: tubes running in the body wall just outside the cavity."""
    g = cv.g
    T, L = TISSUES, LABELS
    sx, sy, sz = g.spacing
    th_bins = (np.arange(P.NTH) + 0.5) / P.NTH * 2 * np.pi - np.pi
    phi_bins = np.abs(np.angle(np.exp(1j * (th_bins - np.pi / 2))))  # 0 at the posterior midline, pi anterior
    idx = np.arange(2, 12)  # ribs 3..12 attach at T3..T12
    z_att = P.vz[idx] + 4.0
    phi0 = 0.42
    drop = 70.0 * P.hf
    phi_end = np.array([2.6, 2.6, 2.6, 2.5, 2.4, 2.25, 2.1, 1.95, 1.55, 1.05])
    gamma = 1.3
    g_phi = np.clip((phi_bins - phi0) / (np.pi - phi0), 0, None) ** gamma  # 0..1
    half_r, half_z = 4.0 * P.hf, 6.0 * P.hf
    zmin_needed = z_att.min() - drop - 10
    kz = np.nonzero(g.z > zmin_needed)[0]
    if kz.size == 0:
        return
    cav = P.R["cavity"][P.zindex(g.z[kz])[:, None, None], ib2[None]]  # (nk, ny, nx)
    dr = r2[None] - (cav + F32(5.0))
    near = np.abs(dr) < F32(half_r + 0.5)
    near &= (phi_bins[ib2] > phi0)[None]
    iz, iy, ix = np.nonzero(near)
    if iz.size == 0:
        return
    zz = g.z[kz][iz].astype(float)
    gp = g_phi[ib2[iy, ix]]
    zeq = zz + drop * gp  # height the point would have at the rib's posterior attachment
    order = np.argsort(z_att)
    za = z_att[order]
    j = np.clip(np.searchsorted(za, zeq), 1, len(za) - 1)
    pick = np.where(np.abs(zeq - za[j - 1]) < np.abs(zeq - za[j]), j - 1, j)
    k = order[pick]
    dz = zeq - z_att[k]
    drr = dr[iz, iy, ix].astype(float)
    q = np.sqrt((drr / half_r) ** 2 + (dz / half_z) ** 2)
    ok = (q < 1) & (phi_bins[ib2[iy, ix]] < phi_end[k])
    t_c = max(1.2, (sx * sy * sz) ** (1 / 3)) / half_r
    tissue = np.where(q > 1 - t_c, T["cortical_bone"], T["trabecular_bone"]).astype(np.uint8)
    zi, yi, xi = kz[iz[ok]], iy[ok], ix[ok]
    cv.labels[zi, yi, xi] = L["ribs"]
    cv.tissue[zi, yi, xi] = tissue[ok]


def paint_lesions(P: Patient, cv: Canvas):
    T = TISSUES
    for n, les in enumerate(P.lesions, start=1):
        blob = les["blob"]

        def fn(X, Y, Z, blob=blob, nu=les["nu"]):
            q = blob.level(X, Y, Z)
            out = _const(q < 1, T["lesion"])
            if nu > 0:
                out[q < F32(nu)] = T["necrosis"]
            return out

        cv.paint(blob.bbox(), fn, LESION_LABEL_BASE + n)


# --------------------------------------------------------------------------------------------
# CT and activity
# --------------------------------------------------------------------------------------------

_HU = {
    "air": -1000.0, "fat": -100.0, "muscle": 52.0, "lung": -855.0, "blood": 40.0, "liver": 58.0, "spleen": 47.0,
    "kidney_cortex": 36.0, "kidney_medulla": 28.0, "kidney_pelvis": 8.0, "pancreas": 40.0, "adrenal": 32.0,
    "gi_wall": 42.0, "gi_content": 18.0, "gas": -980.0, "stool": -40.0, "bile": 8.0, "csf": 15.0, "disc": 85.0,
    "trabecular_bone": 250.0, "cortical_bone": 1250.0, "bone_mixed": 550.0, "lesion": 40.0, "necrosis": 18.0,
    "breast": -45.0,
}
_HU_TEXTURE = {"fat": 10.0, "lung": 30.0, "muscle": 4.0, "liver": 4.0, "spleen": 3.0, "stool": 60.0,
               "gi_content": 8.0, "trabecular_bone": 25.0, "bone_mixed": 60.0, "breast": 30.0}


def concentrations(P: Patient, t_days: float | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-label concentration (MBq/mL at ``t_days``) and per-tissue factor lookup tables.

    Every compartment clears mono-exponentially from its day-1 value ``c1``:
    ``c(t) = c1 2^(-(t - 24 h) / T_eff)``. ``t_days=None`` gives the time integral from the
    injection to infinity instead, ``c1 2^(24 h / T_eff) T_eff / ln 2`` (MBq h/mL).
    """
    if t_days is None:
        decay = lambda c1, teff: c1 * 2.0 ** (24.0 / teff) * teff / math.log(2.0)  # noqa: E731
    else:
        dt_h = (t_days - 1.0) * 24.0
        decay = lambda c1, teff: c1 * 2.0 ** (-dt_h / teff)  # noqa: E731
    c = {k: decay(P.c1[k], P.teff[t]) for k, t in (
        ("kidney_cortex", "kidney"), ("liver", "liver"), ("spleen", "spleen"), ("adrenal", "adrenal"),
        ("pancreas", "pancreas"), ("stomach", "stomach"), ("bowel", "bowel"), ("blood", "blood"),
        ("muscle", "muscle"), ("lung", "lung"), ("marrow", "marrow"))}
    c["fat"] = c["muscle"] * P.fat_frac
    c["gallbladder"] = 0.1 * c["liver"]
    c["csf"] = 0.3 * c["blood"]
    n_max = LESION_LABEL_BASE + len(P.lesions) + 1
    lut = np.zeros(max(n_max, 64), np.float64)
    L = LABELS
    per_label = {
        "fat": c["fat"], "muscle": c["muscle"], "lung_left": c["lung"], "lung_right": c["lung"], "heart": c["blood"],
        "aorta": c["blood"], "inferior_vena_cava": c["blood"], "liver": c["liver"], "gallbladder": c["gallbladder"],
        "spleen": c["spleen"], "stomach": c["stomach"], "pancreas": c["pancreas"], "adrenal_left": c["adrenal"],
        "adrenal_right": c["adrenal"], "small_bowel": c["bowel"], "colon": c["bowel"], "kidney_left": c["kidney_cortex"],
        "kidney_right": c["kidney_cortex"], "spinal_canal": c["csf"], "intervertebral_discs": 0.3 * c["marrow"],
        "ribs": c["marrow"], "sternum": c["marrow"], "pelvis": c["marrow"], "sacrum": c["marrow"],
        "arm_bones": c["marrow"],
    }
    for name, v in per_label.items():
        lut[L[name]] = v
    for i in range(len(VERTEBRA_LEVELS)):
        lut[VERTEBRA_LABEL_BASE + 1 + i] = c["marrow"]
    lesion_c = []
    for n, les in enumerate(P.lesions, start=1):
        v = decay(les["c1"], les["teff"])
        lut[LESION_LABEL_BASE + n] = v
        lesion_c.append(v)
    tf = np.ones(len(TISSUES), np.float64)
    T = TISSUES
    tf[T["air"]] = 0.0
    tf[T["gas"]] = 0.0
    tf[T["kidney_medulla"]] = P.medulla_frac
    tf[T["kidney_pelvis"]] = P.pelvis_frac
    tf[T["gi_content"]] = 0.3
    tf[T["stool"]] = 0.2
    tf[T["cortical_bone"]] = 0.15
    tf[T["bone_mixed"]] = 0.5
    tf[T["necrosis"]] = P.necrosis_frac
    tf[T["breast"]] = 1.5
    return lut, tf, {"organs": c, "lesions": lesion_c}


def _heterogeneity_sigma(n_labels: int) -> np.ndarray:
    s = np.full(n_labels, 0.10, np.float32)
    L = LABELS
    for name, v in (("fat", 0.15), ("muscle", 0.15), ("liver", 0.12), ("spleen", 0.10), ("small_bowel", 0.3),
                    ("colon", 0.3), ("stomach", 0.2), ("kidney_left", 0.10), ("kidney_right", 0.10)):
        s[L[name]] = v
    s[LESION_LABEL_BASE + 1:] = 0.25
    return s




def uptake_heterogeneity(f_act: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Log-normal uptake heterogeneity (mean 1) from a smooth unit field, per label's sigma; consumes ``f_act``."""
    sl = _heterogeneity_sigma(n_labels)[labels]
    f_act *= sl
    f_act -= F32(0.5) * sl * sl
    np.exp(f_act, out=f_act)
    return f_act


def paint_activity(lut: np.ndarray, tf: np.ndarray, labels: np.ndarray, tissue: np.ndarray,
                    heterogeneity: np.ndarray, spacing: tuple[float, float, float], pet_fwhm_mm: float) -> np.ndarray:
    """Activity per voxel (float32): ``lut`` per label (MBq/mL, or MBq h/mL for a time integral) x 1e6,
    times the tissue factor and the heterogeneity, blurred by ``pet_fwhm_mm`` (mm), zero outside the body.

    Linear in ``lut``: the time integral of the activity is this of the time-integrated ``lut``.
    """
    act = (lut.astype(F32) * F32(1e6))[labels]
    act *= tf.astype(F32)[tissue]
    act *= heterogeneity
    sigma_vox = [pet_fwhm_mm / 2.3548 / s for s in (spacing[2], spacing[1], spacing[0])]
    if pet_fwhm_mm > 0:
        act = ndimage.gaussian_filter(act, sigma_vox, mode="nearest")
    act[labels <= 0] = 0.0
    np.maximum(act, 0, out=act)
    return act


def paint_ct(P: Patient, grid: Grid, labels: np.ndarray, tissue: np.ndarray, f_ct: np.ndarray,
             rng: np.random.Generator, ct_noise_hu: float) -> np.ndarray:
    """The CT (HU, float32) of the painted ``labels``/``tissue``: per-tissue CT numbers, the smooth texture
    ``f_ct`` (unit field) scaled per tissue, each lesion's own CT numbers, denser dependent lung, and white
    noise of ``ct_noise_hu`` (HU) drawn from ``rng``; clipped to [-1024, 3071]."""
    spacing = grid.spacing
    hu_lut = np.array([_HU[name] for name in TISSUES], np.float32)
    hu_lut[TISSUES["liver"]] = P.hu_liver
    hu_lut[TISSUES["trabecular_bone"]] = P.hu_trab
    t_mean = (spacing[0] * spacing[1] * spacing[2]) ** (1 / 3)
    hu_lut[TISSUES["cortical_bone"]] = P.hu_trab + (1250.0 - P.hu_trab) * min(1.0, 1.5 / t_mean)
    tex_lut = np.full(len(TISSUES), 2.0, np.float32)
    tex_lut[TISSUES["air"]] = 0.0
    for name, v in _HU_TEXTURE.items():
        tex_lut[TISSUES[name]] = v
    hu = hu_lut[tissue]
    hu += tex_lut[tissue] * f_ct
    # lesions: their own CT numbers
    for n, les in enumerate(P.lesions, start=1):
        b = grid.box(*les["blob"].bbox())
        if b is None:
            continue
        sl = b[0]
        sub_l, sub_t, sub_h = labels[sl], tissue[sl], hu[sl]
        m = sub_l == LESION_LABEL_BASE + n
        sub_h[m & (sub_t == TISSUES["lesion"])] += F32(les["hu"] - _HU["lesion"])
        sub_h[m & (sub_t == TISSUES["necrosis"])] += F32(les["hu_nec"] - _HU["necrosis"])
    # lungs: denser posteriorly (dependent lung)
    lung = tissue == TISSUES["lung"]
    if lung.any():
        grad = np.clip((grid.y[None, :, None] + 100.0) / 200.0, 0, 1).astype(F32) * F32(70.0)
        hu += np.where(lung, grad, F32(0))
    hu += rng.standard_normal(grid.shape, dtype=F32) * F32(ct_noise_hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return hu
