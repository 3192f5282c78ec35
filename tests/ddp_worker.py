"""Run by tests/test_distributed.py as 2 torchrun workers (gloo, CPU): the data-parallel primitives
of core.distributed against what one process computes on the whole batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.distributed import World, training_world


def check_gradient_average(world: World) -> None:
    """Each rank's share of a batch + average_gradients == the gradient of the whole batch."""
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    world.broadcast_from_main(net)
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=data), torch.randn(8, 1, generator=data)
    F.mse_loss(net(x), y).backward()
    whole = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    F.mse_loss(net(world.shard(x)), world.shard(y)).backward()
    world.average_gradients(net)
    for got, want in zip((p.grad for p in net.parameters()), whole):
        assert torch.allclose(got, want, atol=1e-6), (got, want)


def check_collectives(world: World) -> None:
    assert world.gather(world.rank * 10) == [0, 10]
    assert world.mean({"loss": float(world.rank)}) == {"loss": 0.5}
    assert world.any(world.rank == 1) and not world.any(False)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(float(world.rank + 1))
    world.broadcast_from_main(bn, buffers_only=True)
    assert torch.equal(bn.running_mean, torch.ones(3))  # rank 0's statistics everywhere


def check_out_of_sync_is_caught(world: World) -> None:
    net = nn.Linear(2, 1)
    world.broadcast_from_main(net)
    world.check_in_sync(net, "probe")  # identical: no error
    with torch.no_grad():
        net.bias += world.rank
    try:
        world.check_in_sync(net, "probe")
    except RuntimeError as e:
        assert "different weights" in str(e)
    else:
        raise AssertionError("check_in_sync missed ranks with different weights")


def main() -> None:
    with training_world("cpu", 1) as (world, device, threads):
        assert world.size == 2 and world.distributed and device.type == "cpu" and threads == 1
        check_gradient_average(world)
        check_collectives(world)
        check_out_of_sync_is_caught(world)
        print(f"rank {world.rank}/{world.size}: data-parallel primitives ok", flush=True)


if __name__ == "__main__":
    main()
