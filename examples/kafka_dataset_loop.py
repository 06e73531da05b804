"""KafkaDataset in your own DDP loop: exact, shuffled epochs over a topic, resumable
on any number of processes (run it twice: the second run resumes from ds-state.pt).

    KAFKA=127.0.0.1:PORT python -m torch.distributed.run --standalone --nproc-per-node 2 \
        examples/kafka_dataset_loop.py
"""
import os

import torch
import torch.distributed as dist
from torch import nn

from ddp_kbit import KafkaDataset

dist.init_process_group("gloo")
ds = KafkaDataset("api.train", bootstrap_servers=os.environ["KAFKA"], batch_size=128)
if os.path.exists("ds-state.pt"):                        # resume: on any number of processes
    ds.load_state_dict(torch.load("ds-state.pt", weights_only=True))
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(ds.epoch, 2):
    ds.set_epoch(epoch)                                  # every rank calls it (it is a collective)
    for batch in ds:                                     # batch.images uint8 (N, 28, 28), batch.labels int64
        x, y = batch.to("cpu")                           # float (N, 1, 28, 28) on the device, labels
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ds.mark_used(batch)                              # this batch went into a step
    if dist.get_rank() == 0:
        torch.save(ds.state_dict(), "ds-state.pt")
print(dist.get_rank(), "trained on", ds.plan.records, "records in the last epoch;", ds.bad.to_dict())
dist.destroy_process_group()
