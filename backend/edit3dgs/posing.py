"""One posing path for rendering: FLAME parameters -> posed meshes -> world Gaussians.

``WorldPoser`` poses a chunk of timesteps with one LBS call and places the
Gaussians of all of them with one batched binding transform
(``GaussianAvatar.place``). Both are launch-bound on a GPU: a timestep's
posing is ~60 small kernels, which cost about as much as gsplat's
rasterization of 16 views. So on CUDA ``pose_and_place`` captures the whole
chunk (posing + placing) once per input shape as a CUDA graph and replays it:
a replay launches everything at once, whatever the number of kernels.
Results are the eager path's (``tests/test_render_gpu.py`` checks it on CUDA).

Even replayed, the ~170 small kernels of one timestep's posing take about 0.6 ms of GPU time on an
H200 (a fifth of rasterizing 16 views), and ``pose_and_place`` runs them between two rasterizations.
``posed_chunks`` (what ``edit3dgs render`` uses) hides them instead: it replays the posing of the next
chunk on a side CUDA stream while the caller rasterizes the current one, into the other of two captured
graphs (double buffering: a chunk's buffers are written again two chunks later, after the caller's work
on them). The posing kernels are tiny, so they run beside the rasterization's.
``compile=True`` runs posing + placing through ``torch.compile`` first, which fuses them into a few
kernels (a compile of about half a minute per number of timesteps, once per process; inductor caches the
code on disk).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .avatar import GaussianAvatar, WorldGaussians, bind_frames, posed_frames
from .bundle import AvatarBundle
from .flame_params import SEQUENCE_KEYS, FlameParams


class WorldPoser:
    """FLAME posing + binding transform for rendering sequences (no gradients).

    ``graphs``: replay CUDA graphs in ``pose_and_place`` (default; CUDA devices only). The world
    Gaussians a graph replay returns live in the graph's buffers: they are valid until the next
    ``pose_and_place`` call with the same number of timesteps (render them before asking again).
    ``posed_chunks`` has graphs of its own (two per input shape), so the two do not overwrite each other.
    """

    def __init__(self, bundle: AvatarBundle, gaussians: GaussianAvatar | None = None, graphs: bool | None = None,
                 compile: bool | str = False):
        self.gaussians = bundle.gaussians if gaussians is None else gaussians
        self.device = self.gaussians.device
        self.head = bundle.head.to(self.device)
        self.faces = self.head.faces
        self.graphs = self.device.type == "cuda" and (graphs is None or bool(graphs))
        self._graphs: dict = {}            # input shape -> (static inputs, graph, outputs), for pose_and_place
        self._graph_pairs: dict = {}       # input shape -> two of those, for posed_chunks' double buffering
        self.graph_error: str | None = None   # why graphs were turned off, if they were
        # compile: True (inductor) or a torch.compile backend's name
        self._run = (torch.compile(self._pose_place, dynamic=False, backend="inductor" if compile is True else compile)
                     if compile else self._pose_place)

    @torch.no_grad()
    def pose(self, params: FlameParams) -> torch.Tensor:
        """Posed vertices (T,V,3) for every timestep of ``params`` in one LBS call."""
        return self.head(params.to_torch(self.device))

    @torch.no_grad()
    def place_sequence(self, verts: torch.Tensor) -> list[WorldGaussians]:
        """World Gaussians for every posed mesh of ``verts`` (T,V,3), in one batched pass
        (a fixed number of kernels, however many timesteps)."""
        g = self.gaussians
        w = g.place(bind_frames(posed_frames(verts, self.faces), g.binding))
        return [WorldGaussians(w.means[t], w.quats[t], w.scales[t], w.opacities, w.sh, w.sh_degree)
                for t in range(verts.shape[0])]

    def _pose_place(self, p: dict) -> list[WorldGaussians]:
        return self.place_sequence(self.head(p))

    def _eager(self, p: dict) -> list[WorldGaussians]:
        with torch.no_grad():
            return self._run(p)

    def upload(self, params: FlameParams) -> dict:
        """``params`` as tensors on the poser's device, for ``pose_and_place`` and ``timesteps_of``: upload a
        sequence once and render it in pieces. (A pose from host memory is a pageable copy, which waits for
        the GPU to finish the previous render before the next can be queued: a fifth of the time of
        rendering one timestep of 16 views on an H200.)"""
        return {k: v for k, v in params.to_torch(self.device).items() if v is not None}

    @staticmethod
    def timesteps_of(uploaded: dict, start: int, stop: int) -> dict:
        """Timesteps ``start:stop`` of an uploaded sequence (views: no copy, no host sync)."""
        return {k: v[start:stop] if k in SEQUENCE_KEYS else v for k, v in uploaded.items()}

    def pose_and_place(self, params: FlameParams | dict) -> list[WorldGaussians]:
        """World Gaussians for every timestep of ``params`` (FlameParams, or ``upload``'s tensors; a CUDA
        graph replay on CUDA)."""
        p = self.upload(params) if isinstance(params, FlameParams) else params
        if not self.graphs:
            return self._eager(p)
        key = self._shape_key(p)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._graphs[key] = self._capture(p)
            except RuntimeError as exc:
                self._graphs_off(exc)
                return self._eager(p)
        static, graph, out = entry
        for k, v in p.items():
            static[k].copy_(v)
        graph.replay()
        return out

    def posed_chunks(self, uploaded: dict, starts: Sequence[int], length: int
                     ) -> Iterator[tuple[int, list[WorldGaussians]]]:
        """``(start, world Gaussians)`` for the chunks ``timesteps_of(uploaded, start, start + length)`` in
        order, each chunk posed while the caller renders the one before it.

        On CUDA with graphs the next chunk's posing is replayed on a side stream, into the other of two
        graphs captured for this shape (their buffers: twice ``pose_and_place``'s memory for posing); a chunk
        is yielded once the caller's (current) stream has waited for its posing. Contract: a chunk's
        Gaussians are the caller's until it resumes the generator: the posing that reuses their buffers (two
        chunks on) is launched at that resume and waits for the work enqueued on the current stream by then and
        no later, so all work on them must be enqueued before, and none may be kept for later (on CUDA,
        ``list(posed_chunks(...))`` would hold overwritten buffers). Without graphs (CPU, ``graphs=False``, a
        failed capture) every chunk is posed eagerly in turn."""
        starts = list(starts)
        if not self.graphs:
            for start in starts:
                yield start, self._eager(self.timesteps_of(uploaded, start, start + length))
            return
        main = torch.cuda.current_stream(self.device)
        # high priority: the posing's small kernels take SM slots as the rasterizer's blocks free them
        side = torch.cuda.Stream(self.device, priority=-1)
        side.wait_stream(main)             # the uploaded parameters were written on the main stream
        released = [None, None]            # per buffer: main's event after the caller's work on its last chunk

        def launch(i: int):
            p = self.timesteps_of(uploaded, starts[i], starts[i] + length)
            pair = self._graph_pair(p) if self.graphs else None   # graphs go off if a capture failed
            if pair is None:
                return self._eager(p), None
            static, graph, out = pair[i % 2]
            with torch.cuda.stream(side):  # replay launches on the current stream
                if released[i % 2] is not None:
                    side.wait_event(released[i % 2])
                for k, v in p.items():
                    static[k].copy_(v)
                graph.replay()
                return out, side.record_event()

        try:
            ahead = launch(0) if starts else None
            for i, start in enumerate(starts):
                out, posed = ahead
                if i + 1 < len(starts):
                    ahead = launch(i + 1)
                if posed is not None:
                    main.wait_event(posed)
                yield start, out
                released[i % 2] = main.record_event()
        finally:                           # also when closed early: nothing left reading `uploaded` on the side
            main.wait_stream(side)

    def _graph_pair(self, p: dict):
        """``posed_chunks``' two graphs for the shape of ``p`` (captured on first use), or None once capturing
        failed."""
        key = self._shape_key(p)
        pair = self._graph_pairs.get(key)
        if pair is None:
            try:
                pair = self._graph_pairs[key] = (self._capture(p), self._capture(p))
            except RuntimeError as exc:
                self._graphs_off(exc)
        return pair

    @staticmethod
    def _shape_key(p: dict) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(p.items()))

    def _graphs_off(self, exc: RuntimeError) -> None:
        """An op that cannot be captured: stay eager for this poser."""
        self.graphs, self.graph_error = False, f"{type(exc).__name__}: {exc}"
        torch.cuda.synchronize(self.device)

    def _capture(self, p: dict):
        static = {k: v.clone() for k, v in p.items()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):       # warm-up outside the capture (cuBLAS handles, allocator)
            for _ in range(2):
                self._eager(static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._eager(static)
        return static, graph, out

    def __call__(self, params: FlameParams | dict) -> WorldGaussians:
        """World Gaussians for a single-timestep ``params`` (their own tensors, not a graph's buffers)."""
        w = self.pose_and_place(params)[0]
        if not self.graphs:
            return w
        return WorldGaussians(w.means.clone(), w.quats.clone(), w.scales.clone(), w.opacities, w.sh, w.sh_degree)
