"""One synthetic talking-face clip: face frames, voice and teacher logits (pure numpy, docs/design.md §3.4).

Everything here is a deterministic function of its arguments: a person and a session (one video) are
drawn from ``(seed, index)``, a clip from its own generator, so clips can be rendered in any order or
process and come out identical.

Expression model. Each emotion moves a set of cue *features* (mouth curvature and opening, brow height
and angle, eye openness, mouth asymmetry, pitch level and range, energy, tempo, spectral tilt, tremor) by
``EFFECTS[emotion] * intensity``. With ``person_relative = r`` a cue is

    feature = r * baseline_p + effect * intensity * (1 - r + r * expressiveness_p) + clip noise

so at r = 0 every person expresses an emotion the same way, and at r = 1 an emotion is only readable
against the person's own resting face and voice (knowing the person helps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter, sosfilt

from emodis_ray.config import SynthConfig
from emodis_ray.data.labels import FERPLUS_CLASSES

FEATURES: tuple[str, ...] = (
    "curv", "open", "brow_h", "brow_ang", "eye", "asym",  # face
    "pitch", "range", "energy", "tempo", "tilt", "tremor",  # voice
)
_F = {f: i for i, f in enumerate(FEATURES)}
#: Cue effects of each FER+ class (rows in ``FERPLUS_CLASSES`` order), about 1 = a strong expression.
EFFECTS: np.ndarray = np.array([
    # curv open brow_h brow_ang eye asym pitch range energy tempo tilt tremor
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # neutral
    [1.0, 0.3, 0.3, 0.0, -0.3, 0.0, 0.8, 0.8, 0.4, 0.3, 0.3, 0.0],  # happiness
    [0.0, 1.0, 1.0, 0.3, 1.0, 0.0, 1.0, 1.0, 0.3, 0.0, 0.2, 0.0],  # surprise
    [-0.9, -0.2, -0.1, 0.9, -0.5, 0.0, -0.7, -0.8, -0.6, -0.6, -0.6, 0.2],  # sadness
    [-0.5, 0.4, -0.7, -0.9, 0.3, 0.0, 0.3, 0.5, 1.0, 0.3, 1.0, 0.0],  # anger
    [-0.7, 0.1, -0.5, -0.5, -0.6, 0.3, -0.4, -0.2, 0.1, -0.3, 0.2, 0.0],  # disgust
    [-0.3, 0.6, 0.8, 0.8, 0.9, 0.0, 1.0, -0.3, -0.2, 0.5, -0.2, 1.0],  # fear
    [0.2, 0.0, -0.1, -0.2, -0.3, 1.0, -0.3, -0.3, -0.2, -0.3, 0.0, 0.0],  # contempt
], dtype=np.float64)
#: The class the teacher confuses each class with (a weaker second logit).
_PARTNER = {"neutral": "contempt", "happiness": "surprise", "surprise": "fear", "sadness": "neutral",
            "anger": "disgust", "disgust": "anger", "fear": "surprise", "contempt": "neutral"}
#: Vowel formants (Hz, adult male reference) for the syllables: a, i, u, e, o.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480],
                    [570, 840, 2410]], dtype=np.float64)
_BANDWIDTHS = np.array([80.0, 100.0, 140.0])
_SKIN_LIGHT, _SKIN_DARK = np.array([250, 220, 190.0]), np.array([105, 68, 45.0])
_HAIR = np.array([[25, 20, 18], [70, 45, 25], [120, 80, 40], [205, 170, 105], [150, 60, 30], [165, 165, 160]],
                 dtype=np.float64)
Arr = np.ndarray | float
TEACHER_EVERY = 6  # one teacher logit row per 6 video frames (EmoVoxCeleb)

# stream tags for np.random.default_rng([seed, tag, ...]): independent streams per purpose
TAG_LABELS, TAG_PERSON, TAG_SESSION, TAG_CLIP = 11, 12, 13, 14


@dataclass(frozen=True)
class Person:
    """A synthetic person: a stable face, voice and way of expressing emotion."""

    index: int
    gender: str  # "m" or "f"
    head_rx: float  # face geometry in normalised image units ([-1, 1] across the crop)
    head_ry: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_top: float
    hair_long: float
    hair_wave: float
    eye_sep: float
    eye_y: float
    eye_r: float
    brow_thick: float
    mouth_w: float
    mouth_y: float
    bg: tuple[float, float, float]
    f0: float  # Hz
    tract: float  # formant scale (vocal tract length)
    rate: float  # syllables per second
    breath: float
    baseline: tuple[float, ...]  # resting offset of each cue feature
    expressiveness: float


@dataclass(frozen=True)
class Session:
    """Recording conditions shared by the clips of one video."""

    light: tuple[float, float, float]  # gain, x gradient, y gradient
    bg_shift: tuple[float, float, float]
    offset: tuple[float, float]
    scale: float
    noise_floor: float
    brightness: float  # audio channel colour: 0 dull .. 1 bright


@dataclass(frozen=True)
class ClipSpec:
    """What one clip shows; everything else is drawn from the clip's own generator."""

    index: int
    person: int
    video: int
    clip_id: str
    emotion: str
    intensity: float
    frames: int
    samples: int


@dataclass
class RenderedClip:
    frames: np.ndarray  # uint8 [T, S, S, 3]
    audio: np.ndarray  # float32 [samples] in [-1, 1]
    logits: np.ndarray  # float32 [ceil(T / 6), 8]


def make_person(seed: int, index: int) -> Person:
    rng = np.random.default_rng([seed, TAG_PERSON, index])
    gender = "f" if rng.random() < 0.5 else "m"
    skin = _SKIN_LIGHT + rng.random() * (_SKIN_DARK - _SKIN_LIGHT) + rng.normal(0, 8, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3)
    baseline = rng.normal(0.0, 0.4, len(FEATURES))
    baseline[[_F["range"], _F["energy"], _F["tempo"], _F["tremor"]]] = 0.0  # voice identity lives in f0/rate
    return Person(
        index=index, gender=gender,
        head_rx=rng.uniform(0.48, 0.62), head_ry=rng.uniform(0.66, 0.80),
        skin=tuple(np.clip(skin, 0, 255)), hair=tuple(np.clip(hair, 0, 255)),
        hair_top=rng.uniform(0.12, 0.3), hair_long=rng.uniform(0.0, 1.0) ** (2 if gender == "m" else 0.5),
        hair_wave=rng.uniform(0.0, 1.0),
        eye_sep=rng.uniform(0.36, 0.46), eye_y=rng.uniform(-0.14, -0.08), eye_r=rng.uniform(0.08, 0.1),
        brow_thick=rng.uniform(0.022, 0.04), mouth_w=rng.uniform(0.24, 0.3), mouth_y=rng.uniform(0.28, 0.36),
        bg=tuple(rng.uniform(70, 180, 3)),
        f0=rng.uniform(170, 240) if gender == "f" else rng.uniform(95, 140),
        tract=rng.uniform(1.05, 1.2) if gender == "f" else rng.uniform(0.88, 1.0),
        rate=rng.uniform(3.0, 5.5), breath=rng.uniform(0.02, 0.1),
        baseline=tuple(baseline), expressiveness=rng.uniform(0.6, 1.4),
    )


def make_session(seed: int, person: int, video: int) -> Session:
    rng = np.random.default_rng([seed, TAG_SESSION, person, video])
    return Session(
        light=(rng.uniform(0.75, 1.2), rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)),
        bg_shift=tuple(rng.normal(0, 25, 3)), offset=(rng.uniform(-0.06, 0.06), rng.uniform(-0.05, 0.05)),
        scale=rng.uniform(0.92, 1.06), noise_floor=rng.uniform(0.5, 1.5), brightness=rng.uniform(0.0, 1.0),
    )


def cue_features(person: Person, emotion: str, intensity: float, relative: float,
                 rng: np.random.Generator) -> np.ndarray:
    """The clip's cue features at full expression (see the module docstring)."""
    effect = EFFECTS[FERPLUS_CLASSES.index(emotion)] * intensity
    gain = 1.0 - relative + relative * person.expressiveness
    return relative * np.asarray(person.baseline) + effect * gain + rng.normal(0.0, 0.15, len(FEATURES))


# ----------------------------------------------------------------------------------------------- time
def _syllables(rng: np.random.Generator, duration: float, rate: float) -> np.ndarray:
    """[n, 5] rows of (onset s, length s, amplitude, vowel index, pitch accent)."""
    rows, t = [], rng.uniform(0.0, 0.2)
    while t < duration or not rows:
        if rows and rng.random() < 0.12:  # a pause
            t += rng.uniform(0.12, 0.35)
            continue
        d = rng.uniform(0.7, 1.3) / rate
        rows.append((t, d, rng.uniform(0.6, 1.0), rng.integers(len(_VOWELS)), rng.normal()))
        t += d
    return np.array(rows, dtype=np.float64)


def _envelope(syl: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Syllable loudness envelope in [0, 1] at times ``t``."""
    i = np.searchsorted(syl[:, 0], t, side="right") - 1
    ic = np.clip(i, 0, None)
    ph = (t - syl[ic, 0]) / syl[ic, 1]
    inside = (i >= 0) & (ph < 1.0)
    return np.where(inside, np.sin(np.pi * np.clip(ph, 0, 1)) ** 0.8 * syl[ic, 2], 0.0)


# ----------------------------------------------------------------------------------------------- face
def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Coverage of a shape from a signed distance ``d`` (normalised units, < 0 inside), anti-aliased."""
    return np.clip(0.5 - d * px, 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: Arr, cy: Arr, rx: Arr, ry: Arr, px: float) -> np.ndarray:
    q = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return _soft((q - 1.0) * np.minimum(rx, ry), px)


def _mix(img: np.ndarray, alpha: np.ndarray, colour: Arr | tuple[float, ...]) -> None:
    img += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - img)


def _box(grid: np.ndarray, lo: Arr, hi: Arr) -> slice:
    """Pixel slice covering [min(lo), max(hi)] (normalised units) with a 2-pixel margin."""
    step = grid[1] - grid[0] if len(grid) > 1 else 2.0
    a = int(np.searchsorted(grid, float(np.min(lo)) - 2 * step))
    b = int(np.searchsorted(grid, float(np.max(hi)) + 2 * step))
    return slice(a, max(a, b))


def render_face(person: Person, session: Session, track: dict[str, np.ndarray], size: int, noise: float,
                rng: np.random.Generator, chunk: int = 64) -> np.ndarray:
    """Frames uint8 [T, S, S, 3] from per-frame parameters ``track`` (arrays [T]); vectorised over time.

    Small features (eyes, brows, nose, mouth) are drawn inside their bounding box over the chunk.
    """
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    x, y = grid[None, None, :], grid[None, :, None]
    px = size / 2.0
    n = len(track["cx"])
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    bg = np.clip(np.asarray(person.bg) + np.asarray(session.bg_shift), 0, 255).astype(np.float32)
    skin = np.asarray(person.skin)
    for s in range(0, n, chunk):
        p = {k: v[s:s + chunk, None, None].astype(np.float32) for k, v in track.items()}
        m = len(p["cx"])
        k, cx, cy = p["k"], p["cx"], p["cy"]
        rx, ry = person.head_rx * k, person.head_ry * k
        # hair behind the head, the head, the fringe on top of it: one pass from the layers' weights
        back = _ellipse(x, y, cx, cy + (0.3 * person.hair_long - 0.06) * ry, rx * 1.13,
                        ry * (1.06 + 0.3 * person.hair_long), px)
        head = _ellipse(x, y, cx, cy, rx, ry, px)
        fringe_y = cy - ry * (0.95 - person.hair_top) + 0.05 * k * person.hair_wave * np.sin(14 * (x - cx))
        fringe = head * _soft(y - fringe_y, px)
        w_skin = head * (1 - fringe)
        w_hair = 1 - (1 - back) * (1 - head) * (1 - fringe) - w_skin
        img = np.multiply.outer(w_skin, (skin - bg).astype(np.float32))
        img += np.multiply.outer(w_hair, (np.asarray(person.hair) - bg).astype(np.float32))
        img += bg
        bx, by = _box(grid, cx - 0.05 * k, cx + 0.05 * k), _box(grid, cy - 0.05 * k, cy + 0.21 * k)
        nose = _ellipse(x[..., bx], y[:, by], cx, cy + 0.08 * k, 0.05 * k, 0.12 * k, px)
        _mix(img[:, by, bx], nose * 0.35, skin * 0.7)
        # eyes and brows
        er = person.eye_r * k
        ey = cy + person.eye_y * k
        for side in (-1.0, 1.0):
            ex = cx + side * person.eye_sep / 2 * k
            half = 1.6 * er
            brow_y = ey - p["brow_h"] * k
            lift = np.abs(np.sin(p["brow_ang"])) * half + person.brow_thick * k
            bx = _box(grid, ex - half, ex + half)
            by = _box(grid, np.minimum(brow_y - lift, ey - er * p["eye"]), ey + er * p["eye"])
            xb, yb, sub = x[..., bx], y[:, by], img[:, by, bx]
            sclera = _ellipse(xb, yb, ex, ey, 1.5 * er, np.maximum(er * p["eye"], 1e-3), px)
            _mix(sub, sclera, (235, 235, 228))
            _mix(sub, sclera * _ellipse(xb, yb, ex, ey, 0.7 * er, 0.7 * er, px), (40, 30, 25))
            line_y = brow_y + side * np.sin(p["brow_ang"]) * (xb - ex)  # inner end up when brow_ang > 0
            d = np.maximum(np.abs(yb - line_y) - person.brow_thick * k / 2, np.abs(xb - ex) - half)
            _mix(sub, _soft(d, px), np.asarray(person.hair) * 0.8)
        # mouth: a curved line that opens with speech
        mx, my, mw = cx, cy + person.mouth_y * k, person.mouth_w * k
        reach = (np.abs(p["curv"]) * 2 / 3 + np.abs(p["asym"]) + p["open"] + 0.03) * k
        bx, by = _box(grid, mx - mw, mx + mw), _box(grid, my - reach, my + reach)
        xb, yb, sub = x[..., bx], y[:, by], img[:, by, bx]
        u = np.clip((xb - mx) / mw, -1.2, 1.2)
        yc = my - p["curv"] * k * (u * u - 1 / 3) + p["asym"] * k * u
        h = p["open"] * k * np.clip(1 - u * u, 0, 1)
        dx = np.abs(xb - mx) - mw
        _mix(sub, _soft(np.maximum(dx, np.abs(yb - yc) - h - 0.028 * k), px), skin * np.array([0.75, 0.5, 0.5]))
        _mix(sub, _soft(np.maximum(dx + 0.01, np.abs(yb - yc) - h), px), (45, 15, 20))
        # lighting and sensor noise
        gain, gx, gy = session.light
        img *= (gain * (1.0 + gx * x + gy * y) * p["flicker"])[..., None]
        grain = rng.standard_normal((m, size, size), dtype=np.float32) * np.float32(18.0 * noise) + 0.5
        img += grain[..., None]  # luminance noise (yuv420p would blur chroma noise anyway)
        np.clip(img, 0, 255, out=img)
        out[s:s + m] = img
    return out


def _face_track(session: Session, f: np.ndarray, talk: np.ndarray, t: np.ndarray,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-frame face parameters (arrays [T]) from cue features ``f`` [features, T] and speech ``talk``."""
    n = len(t)
    ph = rng.uniform(0, 2 * np.pi, 4)
    per = rng.uniform(1.5, 4.0, 4)
    wob = [np.sin(2 * np.pi * t / per[i] + ph[i]) for i in range(4)]
    blink = np.ones(n)
    for b in np.flatnonzero(rng.random(n) < 0.3 / 25.0):  # about one blink per 3 s at 25 fps
        blink[b:b + 3] *= np.array([0.5, 0.1, 0.5])[: len(blink[b:b + 3])]
    return {
        "cx": session.offset[0] + 0.035 * wob[0],
        "cy": 0.08 + session.offset[1] + 0.03 * wob[1],
        "k": session.scale * (1.0 + 0.03 * wob[2]),
        "flicker": 1.0 + 0.03 * wob[3],
        "curv": 0.015 + 0.3 * f[_F["curv"]],
        "asym": 0.12 * f[_F["asym"]],
        "open": np.clip(0.015 + 0.08 * f[_F["open"]] + 0.04 * talk, 0.0, 0.22),
        "brow_h": 0.17 + 0.14 * f[_F["brow_h"]],
        "brow_ang": 0.5 * f[_F["brow_ang"]],
        "eye": np.clip(1.0 + 0.8 * f[_F["eye"]], 0.15, 2.3) * blink,
    }


# ---------------------------------------------------------------------------------------------- voice
def _resonators(formants: np.ndarray, sr: int) -> np.ndarray:
    """Second-order sections of a cascade of unity-DC-gain formant resonators."""
    r = np.exp(-np.pi * _BANDWIDTHS / sr)
    a1 = -2 * r * np.cos(2 * np.pi * np.minimum(formants, 0.45 * sr) / sr)
    a2 = r * r
    return np.stack([1 + a1 + a2, np.zeros(3), np.zeros(3), np.ones(3), a1, a2], axis=1)


def render_voice(person: Person, session: Session, cue: np.ndarray, syl: np.ndarray, n: int, sr: int,
                 noise: float, rng: np.random.Generator) -> np.ndarray:
    """Mono float32 [n]: a glottal pulse train at a time-varying f0 through per-syllable formants."""
    t = np.arange(n) / sr
    env = _envelope(syl, t)
    centres = syl[:, 0] + syl[:, 1] / 2
    # the per-utterance, per-bin normalisation of the features removes static levels (pitch, loudness,
    # colour), so emotion also moves the *dynamics*: pitch range and glide, tremor, loudness contrast
    accent = np.interp(t, centres, syl[:, 4])  # [n] the syllables' pitch accents, smoothed
    rng_st = max(2.5 * (1 + 1.2 * cue[_F["range"]]), 0.3)
    glide = 5.0 * cue[_F["pitch"]] * (t / max(t[-1], 1e-3) - 0.5)  # rising (surprise, fear) or falling
    tremor = max(cue[_F["tremor"]], 0.0) * np.sin(2 * np.pi * 5.5 * t)
    semis = (3.0 * cue[_F["pitch"]] + rng_st * 0.5 * accent + glide  # level, accents, glide
             - 1.5 * t / max(t[-1], 1e-3)  # declination
             + 2.0 * tremor)
    loud = 10 ** ((4.0 * max(1.0 + 1.5 * cue[_F["energy"]], 0.0) * accent + 4.0 * tremor) / 20)  # stress
    f0 = person.f0 * 2.0 ** (semis / 12.0)
    phase = np.cumsum(f0 / sr) % 1.0
    oq = float(np.clip(0.6 - 0.12 * cue[_F["tilt"]], 0.35, 0.8))
    pulse = np.where(phase < oq, 0.5 - 0.5 * np.cos(2 * np.pi * phase / oq), 0.0)
    src = (np.diff(pulse, prepend=0.0) + person.breath * rng.standard_normal(n)) * env * loud
    # formants change per syllable; the filter state carries over
    voice = np.empty(n)
    bounds = np.r_[np.clip((syl[:, 0] * sr).astype(np.int64), 0, n), n]
    bounds[0] = 0
    zi = np.zeros((3, 2))
    for i in range(len(syl)):
        a, b = bounds[i], bounds[i + 1]
        if b > a:
            sos = _resonators(_VOWELS[int(syl[i, 3])] * person.tract, sr)
            voice[a:b], zi = sosfilt(sos, src[a:b], zi=zi)
    low = lfilter([0.15], [1, -0.85], voice)  # spectral tilt: louder speech is brighter
    bright = np.clip(0.5 + 0.35 * cue[_F["tilt"]] + 0.2 * (session.brightness - 0.5)
                     + 0.3 * cue[_F["tilt"]] * accent, 0.05, 1.4)  # stressed syllables brighter when tense
    voice = low + bright * (voice - low)
    rms = np.sqrt(np.mean(voice[env > 0.1] ** 2)) if np.any(env > 0.1) else 1.0
    voice *= 0.08 / max(rms, 1e-9) * 10 ** (8.0 * cue[_F["energy"]] / 20)
    voice += rng.standard_normal(n) * (0.012 * noise * session.noise_floor)
    return np.clip(voice, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------- clip
def teacher_logits(emotion: str, expr: np.ndarray, teacher_noise: float,
                   rng: np.random.Generator) -> np.ndarray:
    """[F, 8] noisy per-frame logits of an FER+-like teacher at the sampled frames' expression ``expr``."""
    k = len(FERPLUS_CLASSES)
    logits = np.zeros((len(expr), k)) + rng.normal(0.0, 0.3, k)  # a per-clip bias
    logits[:, 0] += 1.0  # teachers lean towards neutral
    logits[:, FERPLUS_CLASSES.index(emotion)] += 3.5 * expr
    logits[:, FERPLUS_CLASSES.index(_PARTNER[emotion])] += 1.2 * expr
    logits += rng.normal(0.0, teacher_noise, logits.shape)
    return logits.astype(np.float32)


def render_clip(spec: ClipSpec, person: Person, session: Session, cfg: SynthConfig) -> RenderedClip:
    """Frames, audio and teacher logits of one clip, from ``(cfg.seed, spec.index)`` alone."""
    rng = np.random.default_rng([cfg.seed, TAG_CLIP, spec.index])
    cue = cue_features(person, spec.emotion, spec.intensity, cfg.person_relative, rng)
    duration = spec.frames / cfg.fps
    rate = person.rate * 2.0 ** (0.7 * cue[_F["tempo"]])
    syl = _syllables(rng, duration, rate)
    t = np.arange(spec.frames) / cfg.fps
    onset = np.clip(0.55 + 0.45 * t / 0.6, 0, 1)
    expr = onset * (1.0 + 0.12 * np.sin(2 * np.pi * t / rng.uniform(1.5, 3.0) + rng.uniform(0, 2 * np.pi)))
    # the resting offsets hold still; the expression ramps in and wobbles
    rest = cfg.person_relative * np.asarray(person.baseline)
    f = rest[:, None] + (cue - rest)[:, None] * expr[None, :]
    track = _face_track(session, f, _envelope(syl, t), t, rng)
    frames = render_face(person, session, track, cfg.size, cfg.noise, rng)
    audio = render_voice(person, session, cue, syl, spec.samples, cfg.sample_rate, cfg.noise, rng)
    sampled = expr[::TEACHER_EVERY] * spec.intensity
    logits = teacher_logits(spec.emotion, sampled, cfg.teacher_noise, rng)
    return RenderedClip(frames=frames, audio=audio, logits=logits)
