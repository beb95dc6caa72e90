"""The video dataset: which videos (`plan`), rendering one video with its raw file, crops, annotations and
truth (`render_video`), and the whole dataset, videos in worker processes (`generate`).

Lighting and sensor noise vary per video: a slow gain drift with an occasional switch, a wandering directional
gradient, a colour tint, and noise; backgrounds differ per video. Two-person videos (`two_person_fraction`)
show two faces side by side, each its own identity, trajectory, annotation file (`_left` / `_right`) and crop
folder.

Determinism: everything derives from `SynthConfig.seed` through one numpy SeedSequence child per video, so
the same config gives byte-identical annotation files, crops and metadata whatever the number of workers.
(The H.264 stream is produced by libx264 and is not part of that promise.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from mambava.core.fileio import atomic_path, is_output_failure, output_error
from mambava.synth.config import ProgressFn, SynthConfig, SynthSummary
from mambava.synth.expression import Track, frame_params, track, truth_arrays
from mambava.synth.identity import Identity, sample_identity
from mambava.synth.layout import (
    ANNOTATION_DIR,
    CROPS_DIR,
    FORMAT_VERSION,
    GROUND_TRUTH_DIR,
    META_DIR,
    META_FILE,
    SPLIT_DIRS,
    TEST_LIST_NAME,
    VIDEOS_DIR,
    annotation_text,
    new_crop_dir,
    prepare_root,
    replace_dir,
    write_jpeg,
    write_text,
)
from mambava.synth.render import (
    LANDMARK_BIAS,
    LANDMARK_JITTER,
    align_crop,
    background,
    composite,
    draw_back_of_head,
    draw_occluder,
    face_base,
    face_placement,
    render_face,
    to_frame,
)
from mambava.synth.signals import smooth_noise
from mambava.synth.voice import SAMPLE_RATE as VOICE_RATE
from mambava.synth.voice import video_audio

# ---------------------------------------------------------------------------------------------------------
# Which videos


@dataclass
class VideoSpec:
    """One video to render: its name in the layout, split, size class, length and random seed."""

    index: int
    name: str
    split: str
    two_person: bool
    n_frames: int
    seed: np.random.SeedSequence
    batch: str


def annotation_names(spec: VideoSpec) -> list[str]:
    """`<v>`, or `<v>_left` and `<v>_right` for a two-person video (Aff-Wild2's naming)."""
    return [f"{spec.name}_left", f"{spec.name}_right"] if spec.two_person else [spec.name]


def _frame_size(spec: VideoSpec, cfg: SynthConfig) -> tuple[int, int]:
    return cfg.two_person_size if spec.two_person else cfg.size


def people(rng: np.random.Generator, spec: VideoSpec, cfg: SynthConfig):
    """(annotation names, identities, tracks) of one video: the first draws from the video's generator."""
    names = annotation_names(spec)
    idents = [sample_identity(rng, spec.two_person) for _ in names]
    tracks = [track(rng, spec.n_frames, cfg.fps, ident, cfg) for ident in idents]
    return names, idents, tracks


def plan(cfg: SynthConfig) -> list[VideoSpec]:
    """The videos of a config, in split order, each with its own seed (SeedSequence child).
    Names follow Aff-Wild2's `<number>-<fps>-<w>x<h>`; batch1/batch2 alternate."""
    root_seq = np.random.SeedSequence(cfg.seed)
    plan_rng = np.random.default_rng(root_seq.spawn(1)[0])
    total = cfg.n_train + cfg.n_val + cfg.n_test
    children = np.random.SeedSequence(cfg.seed, spawn_key=(1,)).spawn(total)
    numbers = plan_rng.permutation(np.arange(1, 10 * total + 1))[:total]
    splits = ["train"] * cfg.n_train + ["validation"] * cfg.n_val + ["test"] * cfg.n_test
    specs = []
    for i, split in enumerate(splits):
        two = bool(plan_rng.random() < cfg.two_person_fraction)
        n = int(plan_rng.integers(cfg.frames[0], cfg.frames[1] + 1))
        w, h = cfg.two_person_size if two else cfg.size
        specs.append(
            VideoSpec(
                index=i,
                name=f"{numbers[i]}-{cfg.fps}-{w}x{h}",
                split=split,
                two_person=two,
                n_frames=n,
                seed=children[i],
                batch="batch1" if i % 2 == 0 else "batch2",
            )
        )
    return specs


# ---------------------------------------------------------------------------------------------------------
# One video


def render_video(root: Path, spec: VideoSpec, cfg: SynthConfig) -> dict:
    """Render one video, write its raw file, crops, annotation(s) and per-frame truth; return its facts.
    Draws from the video's generator in a fixed order: people, scene, lighting, the aligner's error."""

    cv2.setNumThreads(1)
    rng = np.random.default_rng(spec.seed)
    w, h = _frame_size(spec, cfg)
    names, idents, tracks = people(rng, spec, cfg)
    scene = _Scene.draw(rng, idents, spec.two_person, w, h)
    lighting = _Lighting.draw(rng, spec.n_frames, cfg.fps, w, h, cfg.noise_sigma)
    # the aligner's landmark error, in frame pixels: a bias per person (a detector errs alike on one face) and a
    # per-frame jitter (together ~2% of the eye distance; MTCNN errs by ~5% on these faces, see docs/faces.md)
    jitter = rng.normal(0.0, LANDMARK_BIAS, (len(names), 1, 5, 2)) + rng.normal(
        0.0, LANDMARK_JITTER, (len(names), spec.n_frames, 5, 2)
    )
    # each person's voice (its own generator, so the frames above are as without it) and when it is heard
    audio, heard = video_audio(
        spec.seed,
        [tr.va for tr in tracks],
        [tr.talking for tr in tracks],
        cfg.fps,
        render=cfg.write_videos and cfg.voices,
    )
    tmp_dirs = [new_crop_dir(root / CROPS_DIR, name) for name in names]
    try:
        n_crops, true_lm, crop_lm = _render_frames(
            root, spec, cfg, idents, tracks, scene, lighting, jitter, tmp_dirs, audio
        )
        return _write_people(
            root, spec, cfg, names, idents, tracks, tmp_dirs, n_crops, true_lm, crop_lm, heard if cfg.voices else None
        )
    except BaseException:
        for tmp in tmp_dirs:  # no half-written crop folders left behind
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class _Scene:
    """What stays put in a video: the background, each person's drawn face base and where the face sits."""

    background: np.ndarray
    bases: list[tuple[np.ndarray, np.ndarray]]
    anchors: list[tuple[float, float]]  # where the canvas point (80, 88), the face centre, goes

    @classmethod
    def draw(cls, rng: np.random.Generator, idents: list[Identity], two_person: bool, w: int, h: int) -> "_Scene":
        back = background(rng, w, h)
        bases = [face_base(ident) for ident in idents]
        if two_person:
            anchors = [
                (w * 0.27 + rng.uniform(-6, 6), h * 0.5 + rng.uniform(-8, 8)),
                (w * 0.73 + rng.uniform(-6, 6), h * 0.5 + rng.uniform(-8, 8)),
            ]
        else:
            anchors = [(w / 2 + rng.uniform(-25, 25), h / 2 + rng.uniform(-10, 12))]
        return cls(back, bases, anchors)


@dataclass
class _Lighting:
    """Lighting per frame (a slow gain drift, an occasional switch, a directional gradient that wanders, a colour
    tint) and sensor noise (a bank of 4 noise images, picked and shifted per frame)."""

    gain: np.ndarray
    grad_strength: np.ndarray
    grad_angle: np.ndarray
    tint: np.ndarray
    noise_bank: np.ndarray
    noise_pick: np.ndarray
    noise_off: np.ndarray
    xx: np.ndarray  # frame coordinates in -1..1
    yy: np.ndarray

    @classmethod
    def draw(
        cls, rng: np.random.Generator, n: int, fps: float, w: int, h: int, noise_sigma: tuple[float, float]
    ) -> "_Lighting":
        gain = 1.0 + 0.12 * smooth_noise(rng, n, 4.0 * fps)
        if rng.random() < 0.4:
            switch = int(rng.integers(n // 4, 3 * n // 4))
            gain[switch:] *= rng.uniform(0.7, 1.3)
        grad_strength = 0.25 * np.abs(smooth_noise(rng, n, 5.0 * fps))
        grad_angle = rng.uniform(0, 2 * np.pi) + 0.8 * smooth_noise(rng, n, 6.0 * fps)
        tint = rng.uniform(0.88, 1.12, 3).astype(np.float32)
        sigma = rng.uniform(*noise_sigma)
        noise_bank = (rng.standard_normal((4, h + 8, w + 8, 3)) * sigma).astype(np.float32)
        noise_pick = rng.integers(0, 4, n)
        noise_off = rng.integers(0, 9, (n, 2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        xx = (xx - w / 2) / (w / 2)
        yy = (yy - h / 2) / (h / 2)
        return cls(gain, grad_strength, grad_angle, tint, noise_bank, noise_pick, noise_off, xx, yy)

    def apply(self, frame: np.ndarray, t: int) -> np.ndarray:
        """Frame t lit and with sensor noise (uint8)."""

        h, w = frame.shape[:2]
        gain, strength, angle, tint = self.gain[t], self.grad_strength[t], self.grad_angle[t], self.tint
        light = (gain * strength * math.cos(angle)) * self.xx
        light += (gain * strength * math.sin(angle)) * self.yy
        light += gain
        oy, ox = self.noise_off[t]
        lit = cv2.multiply(frame, cv2.merge([light * tint[0], light * tint[1], light * tint[2]]), dtype=cv2.CV_32F)
        cv2.add(lit, self.noise_bank[self.noise_pick[t], oy : oy + h, ox : ox + w], dst=lit)
        return cv2.convertScaleAbs(lit)  # rounds and saturates to uint8 (values are >= 0 after abs)


def _render_frames(
    root: Path,
    spec: VideoSpec,
    cfg: SynthConfig,
    idents: list[Identity],
    tracks: list[Track],
    scene: _Scene,
    lighting: _Lighting,
    jitter: np.ndarray,
    tmp_dirs: list[Path],
    audio: np.ndarray | None = None,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Draw every frame, write it to the raw video (with `audio` as its sound track, AAC at the voices' 16 kHz,
    when given) and its crops to the temporary crop folders; returns the
    number of crops per person, and per person and frame (frame pixels, NaN where none) the drawn face's true
    landmarks and those its crop was aligned with (`RENDERED_TRUTH`)."""
    w, h = _frame_size(spec, cfg)
    writer = (
        VideoWriter(root / VIDEOS_DIR / spec.batch / f"{spec.name}.mp4", w, h, cfg.fps, cfg.crf, audio)
        if cfg.write_videos
        else None
    )
    n_crops = [0] * len(idents)
    true_lm = np.full((len(idents), spec.n_frames, 5, 2), np.nan, np.float32)
    crop_lm = np.full((len(idents), spec.n_frames, 5, 2), np.nan, np.float32)
    try:
        for t in range(spec.n_frames):
            frame = scene.background.copy()
            landmarks = [
                _draw_person(frame, t, ident, tr, scene.bases[k], scene.anchors[k])
                for k, (ident, tr) in enumerate(zip(idents, tracks))
            ]
            frame = lighting.apply(frame, t)
            if writer is not None:
                writer.write(frame)
            for k, lm_frame in enumerate(landmarks):
                if lm_frame is not None:
                    true_lm[k, t] = lm_frame
                if lm_frame is None or not tracks[k].crop[t]:
                    continue
                crop_lm[k, t] = lm_frame + jitter[k, t]
                crop = align_crop(frame, lm_frame + jitter[k, t], cfg.crop_size)
                write_jpeg(tmp_dirs[k] / f"{t + 1:05d}.jpg", crop, cfg.jpeg_quality, spec.name, f"frame {t + 1}")
                n_crops[k] += 1
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return n_crops, true_lm, crop_lm


def _draw_person(
    frame: np.ndarray,
    t: int,
    ident: Identity,
    tr: Track,
    base: tuple[np.ndarray, np.ndarray],
    anchor: tuple[float, float],
) -> np.ndarray | None:
    """Draw one person into frame t (in place): the face with its occluders, or the back of the head when the
    person has turned away. Returns the 5 landmarks in frame pixels, None without a face."""
    s = ident.scale * tr.scale[t]
    ang = math.radians(tr.roll[t])
    centre = np.array([anchor[0] + tr.tx[t], anchor[1] + tr.ty[t]])
    rot, m = face_placement(s, ang, centre)
    if not tr.present[t]:
        draw_back_of_head(frame, ident, centre, rot, s, ang)
        return None
    canvas, mask, lm = render_face(ident, frame_params(tr, t), base)
    composite(frame, canvas, mask, m)
    lm_frame = to_frame(lm, m)
    for occ in tr.occluder:
        if occ[0] <= t < occ[0] + occ[1]:
            draw_occluder(frame, lm_frame, s, occ, t)
    return lm_frame


def _write_people(
    root: Path,
    spec: VideoSpec,
    cfg: SynthConfig,
    names: list[str],
    idents: list[Identity],
    tracks: list[Track],
    tmp_dirs: list[Path],
    n_crops: list[int],
    true_lm: np.ndarray,
    crop_lm: np.ndarray,
    heard: list[np.ndarray] | None = None,
) -> dict:
    """Move the crop folders into place, write each person's annotation and truth (with `voice`, the frames
    where their voice is heard); return the video's facts."""
    w, h = _frame_size(spec, cfg)
    facts = {
        "name": spec.name,
        "split": spec.split,
        "two_person": spec.two_person,
        "n_frames": spec.n_frames,
        "size": [w, h],
        "fps": cfg.fps,
        "video": f"{VIDEOS_DIR}/{spec.batch}/{spec.name}.mp4" if cfg.write_videos else None,
        "persons": [],
    }
    for k, (name, ident, tr) in enumerate(zip(names, idents, tracks)):
        replace_dir(tmp_dirs[k], root / CROPS_DIR / name)
        label_dir = (
            (root / ANNOTATION_DIR / SPLIT_DIRS[spec.split])
            if spec.split != "test"
            else (root / GROUND_TRUTH_DIR / SPLIT_DIRS["test"])
        )
        write_text(label_dir / f"{name}.txt", annotation_text(tr.labels))
        with atomic_path(root / META_DIR / f"{name}.npz") as tmp:
            with open(tmp, "wb") as handle:
                voice = {} if heard is None else {"voice": heard[k]}
                np.savez_compressed(
                    handle, **truth_arrays(tr), landmarks=true_lm[k], crop_landmarks=crop_lm[k], **voice
                )
        facts["persons"].append(
            {
                "name": name,
                "lag_frames": tr.lag,
                "crops": n_crops[k],
                "invalid_labels": int((tr.labels[:, 0] == -5.0).sum()),
                **({} if heard is None else {"voice_frames": int(heard[k].sum())}),
                "identity": {
                    key: (
                        round(val, 4)
                        if isinstance(val, float)
                        else [round(x, 1) for x in val]
                        if isinstance(val, tuple)
                        else val
                    )
                    for key, val in dataclasses.asdict(ident).items()
                },
            }
        )
    return facts


class VideoWriter:
    """H.264 (yuv420p) mp4 through PyAV, written to a temporary file and renamed when closed; with `audio`
    (float32 mono samples at `sample_rate` from t = 0), an AAC sound track muxed beside the frames."""

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: int,
        crf: int,
        audio: np.ndarray | None = None,
        sample_rate: int = VOICE_RATE,
    ):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": "ultrafast"}
        self.stream.thread_count = 1
        self.audio, self.sample_rate, self.fps, self.frames, self.samples = audio, sample_rate, fps, 0, 0
        if audio is not None:
            self.audio_stream = self.container.add_stream("aac", rate=sample_rate, layout="mono")
            self.audio_stream.bit_rate = 48000

    def write(self, bgr: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1
        if self.audio is not None:  # the sound up to this frame's end, so the file interleaves the two
            self._write_audio(round(self.frames / self.fps * self.sample_rate))

    def _write_audio(self, until: int) -> None:
        chunk = self.audio[self.samples : until]
        if len(chunk):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk, np.float32)[None], format="flt", layout="mono"
            )
            frame.sample_rate, frame.pts = self.sample_rate, self.samples
            for packet in self.audio_stream.encode(frame):
                self.container.mux(packet)
            self.samples += len(chunk)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        if self.audio is not None:
            self._write_audio(len(self.audio))
            for packet in self.audio_stream.encode():
                self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.container.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


# ---------------------------------------------------------------------------------------------------------
# The whole dataset


def _job(args: tuple) -> dict:
    root, spec, cfg = args
    return render_video(Path(root), spec, cfg)


def run_jobs(
    fn, jobs: list, workers: int, progress: ProgressFn | None, names: list[str], order: list[int] | None = None
) -> list:
    """fn(job) for every job, in worker processes (spawned, so safe beside torch) when workers > 1; results in
    job order. `order` is the submission order (longest first keeps the workers busy to the end)."""
    workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(jobs)))
    results: list = [None] * len(jobs)
    if progress:
        progress(0, len(jobs), "")
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = fn(job)
            if progress:
                progress(i + 1, len(jobs), names[i])
        return results

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, jobs[i]): i for i in (order or range(len(jobs)))}
        for done, future in enumerate(as_completed(futures), start=1):
            i = futures[future]
            results[i] = future.result()
            if progress:
                progress(done, len(jobs), names[i])
    return results


def generate(
    out_dir: str | os.PathLike, cfg: SynthConfig | None = None, progress: ProgressFn | None = None
) -> SynthSummary:
    """Generate a synthetic dataset under `out_dir` (see the module docstring). `progress(done, total, name)` is
    called after each video. An existing synthetic dataset there is replaced; any other non-empty folder is an
    error."""
    cfg = cfg or SynthConfig()
    try:
        return _generate(Path(out_dir), cfg, progress)
    except OSError as error:  # a full or read-only disk: one line naming the dataset folder
        if is_output_failure(error, out_dir):
            raise output_error(error, out_dir) from None
        raise


def _generate(root: Path, cfg: SynthConfig, progress: ProgressFn | None) -> SynthSummary:
    started = time.perf_counter()
    prepare_root(root)
    specs = plan(cfg)
    order = sorted(range(len(specs)), key=lambda i: -specs[i].n_frames * (2 if specs[i].two_person else 1))
    facts = run_jobs(
        _job, [(str(root), spec, cfg) for spec in specs], cfg.workers, progress, [spec.name for spec in specs], order
    )

    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for f in facts:
        splits[f["split"]].extend(p["name"] for p in f["persons"])
    for split in splits:
        splits[split].sort()
    (root / ANNOTATION_DIR / SPLIT_DIRS["train"]).mkdir(parents=True, exist_ok=True)
    (root / ANNOTATION_DIR / SPLIT_DIRS["validation"]).mkdir(parents=True, exist_ok=True)
    write_text(root / TEST_LIST_NAME, "".join(f"{name}\n" for name in splits["test"]))
    meta = {
        "generator": "mambava.synth",
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "splits": splits,
        "videos": facts,
    }
    write_text(root / META_FILE, json.dumps(meta, indent=1) + "\n")
    return SynthSummary(
        root=root,
        splits=splits,
        videos=[f["name"] for f in facts],
        frames=sum(f["n_frames"] for f in facts),
        person_frames=sum(f["n_frames"] * len(f["persons"]) for f in facts),
        crops=sum(p["crops"] for f in facts for p in f["persons"]),
        invalid_labels=sum(p["invalid_labels"] for f in facts for p in f["persons"]),
        seconds=time.perf_counter() - started,
        config=cfg,
    )


# ---------------------------------------------------------------------------------------------------------
# A video with a cut (identities across shots)


@dataclass
class CutVideo:
    """What `render_cut_video` drew: the video, the frame where the second shot starts, and per person (0, 1)
    and frame the true 5 landmarks' centre in frame pixels (where that person's face is)."""

    path: Path
    cut: int
    n_frames: int
    centres: np.ndarray  # (2, n_frames, 2)


def render_cut_video(
    path: str | os.PathLike, seed: int = 0, shot_frames: tuple[int, int] = (20, 20), cfg: SynthConfig | None = None
) -> CutVideo:
    """Two people, then a cut to another shot of the same two with their places swapped (another background
    and light): what a tracker that follows places gets wrong, and what identities must get right. Both faces
    are visible in every frame (no turning away, no occluders); the sound track is left out. H.264 mp4."""
    cfg = cfg or SynthConfig(seed=seed)
    path = Path(path)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    w, h = cfg.two_person_size
    n = int(sum(shot_frames))
    idents = [sample_identity(rng, True) for _ in range(2)]
    tracks = []
    for ident in idents:
        tr = track(rng, n, cfg.fps, ident, cfg)
        tracks.append(dataclasses.replace(tr, present=np.ones(n, bool), occluder=[]))
    shots = [(_Scene.draw(rng, idents, True, w, h), (0, 1)), (_Scene.draw(rng, idents[::-1], True, w, h), (1, 0))]
    lights = [_Lighting.draw(rng, k, cfg.fps, w, h, cfg.noise_sigma) for k in shot_frames]
    centres = np.full((2, n, 2), np.nan)
    writer = VideoWriter(path, w, h, cfg.fps, cfg.crf)
    try:
        t = 0
        for (scene, order), lighting, frames in zip(shots, lights, shot_frames):
            for k in range(frames):
                frame = scene.background.copy()
                for place, person in enumerate(order):
                    landmarks = _draw_person(
                        frame, t, idents[person], tracks[person], scene.bases[place], scene.anchors[place]
                    )
                    centres[person, t] = landmarks.mean(0)
                writer.write(lighting.apply(frame, k))
                t += 1
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return CutVideo(path, int(shot_frames[0]), n, centres)
