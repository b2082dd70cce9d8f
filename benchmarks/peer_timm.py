"""The PyTorch side of `benchmarks/bench_vs_timm.py`: timm's resnext101_32x4d, block by block.

Runs in the peer venv (`benchmarks/setup_peer_env.sh`), never in the project's, so it
imports nothing of the project. A persistent subprocess: one JSON command per line on
stdin, one `PEER {json}` answer per command on stdout (the protocol: docs/design.md,
"Benchmarks"). Training step: forward (train mode), cross-entropy, backward, SGD lr 0.01
momentum 0.9 weight_decay 1e-4 (the same L2 decay as our loss term); inference: eval mode
under `torch.inference_mode()`. Each step is synchronous and timed alone. With
PEER_AUTOCAST=bfloat16 the forward passes run under `torch.autocast("cpu", torch.bfloat16)`.
"""

import contextlib
import functools
import gc
import json
import os
import sys
import time

_OUT = sys.stdout
sys.stdout = sys.stderr  # so nothing but answers reaches the harness


def answer(obj):
    _OUT.write("PEER " + json.dumps(obj) + "\n")
    _OUT.flush()


class Peer:
    def __init__(self):
        self.step = None
        self.model = None

    def hello(self, threads):
        import timm
        import torch
        import torchvision

        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already set (allowed once per process)
            torch.set_num_interop_threads(1)
        self.torch = torch
        self.timm = timm
        return {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
            "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "KMP_"))},
        }

    def setup(self, mode, batch, size, channels_last=False, seed=0):
        torch = self.torch
        self.step = self.model = None
        gc.collect()
        torch.manual_seed(seed)
        model = self.timm.create_model("resnext101_32x4d", pretrained=False, num_classes=1000)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        images = torch.rand(batch, 3, size, size).mul_(255.0)
        images = ((images - 127.5) / 58.0).contiguous(memory_format=fmt)
        targets = torch.randint(0, 1000, (batch,))
        dtype = os.environ.get("PEER_AUTOCAST")
        if dtype:
            autocast = functools.partial(torch.autocast, "cpu", dtype=getattr(torch, dtype))
        else:
            autocast = contextlib.nullcontext
        if mode == "train":
            model.train()
            optimizer = torch.optim.SGD(
                model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4
            )
            loss_fn = torch.nn.CrossEntropyLoss()

            def step():
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = loss_fn(model(images), targets)
                loss.backward()
                optimizer.step()
                return loss.item()

        elif mode == "infer":
            model.eval()

            def step():
                with torch.inference_mode(), autocast():
                    return float(model(images)[0, 0])

        else:
            raise ValueError(f"mode must be train or infer, got {mode!r}")
        self.model, self.step = model, step
        params = sum(p.numel() for p in model.parameters())
        return {"params": params}

    def run(self, steps):
        # The same loop as bench_vs_timm.OursWorker.run, repeated on purpose: this file runs
        # in the torch venv, which cannot import the project's modules.
        times, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            self.step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)  # CPU seconds of all the process's threads
        return {"times": times, "cpu": cpu}


def main():
    peer = Peer()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        cmd = request.pop("cmd")
        try:
            if cmd == "quit":
                answer({"ok": True})
                return
            result = getattr(peer, cmd)(**request)
            answer({"ok": True, **result})
        except Exception as error:  # reported to the harness, which stops
            answer({"ok": False, "error": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    main()
