"""Per-run results: metrics.jsonl (one JSON object per logged step) and TensorBoard events."""

import json
import math
import os
import socket
import struct
import sys
import time

from research.errors import write_errors


class MetricsWriter:
  """Appends rows to <workdir>/metrics.jsonl and TensorBoard; only the writing process opens it."""

  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = self._fd = None
    if not enabled:
      return
    # Rows past the checkpoint we resume from were logged by a run that died before saving
    # again; the resumed run logs those steps anew, so drop them to keep one row per step.
    if os.path.exists(self.path):
      with open(self.path, 'rb') as f:
        lines = f.read().split(b'\n')
      torn = lines.pop() != b''  # a last line without its newline: a write cut short
      kept = [l for l in lines if l.strip() and json.loads(l)['step'] <= resume_step]
      if torn or len(kept) != len(lines):
        self._replace(b''.join(l + b'\n' for l in kept))
    # Unbuffered: a row is on disk (in the page cache) when write returns, and a write that
    # fails leaves the file as it was (see write).
    with write_errors(self.path):
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      self._tb = EventsWriter(workdir, purge_step=resume_step + 1)  # hides events after it
    except ImportError:  # TensorBoard events are a convenience; metrics.jsonl is the record
      self._tb = None

  def _replace(self, data: bytes) -> None:
    tmp = self.path + '.tmp'
    try:
      with write_errors(self.path), open(tmp, 'wb') as f:
        f.write(data)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    os.replace(tmp, self.path)  # the old rows stay whole until the new file is

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'split': split, **{k: _plain(v) for k, v in metrics.items()}}
    _append(self._fd, (json.dumps(row) + '\n').encode(), self.path)
    if self._tb is not None:
      self._tb.write(int(step), {f'{split}/{k}': v for k, v in row.items()
                                 if k not in ('step', 'split') and isinstance(v, (int, float))})

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None
    if self._tb is not None:
      tb, self._tb = self._tb, None
      tb.close()


def _append(fd: int, data: bytes, path: str) -> None:
  """Appends all of data to fd, or raises a RunError naming path and leaves the file as it was."""
  end = os.lseek(fd, 0, os.SEEK_END)
  try:
    with write_errors(path):
      done = 0
      while done < len(data):  # a short write (a disk filling up) writes the rest or fails
        done += os.write(fd, data[done:])
  except BaseException:
    try:
      os.ftruncate(fd, end)  # no half row: the rows before it stay readable
    except OSError:  # not a regular file (/dev/full)
      pass
    raise


class EventsWriter:
  """TensorBoard scalars in an event file, written as they come, in this thread.

  Not tensorboardX's SummaryWriter: its writing thread, its atexit flush and its fsync per flush
  turn one full disk into three tracebacks. Here a failed write is a RunError naming the file,
  like one of metrics.jsonl. purge_step: TensorBoard hides the events of earlier files from that
  step on (the steps a resumed run logs again)."""

  def __init__(self, workdir: str, *, purge_step: int):
    self._pb, self._crc = _tensorboardx()
    self.path = os.path.join(workdir, f'events.out.tfevents.{int(time.time())}.'
                                      f'{socket.gethostname()}.{os.getpid()}')
    with write_errors(self.path):
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    event_pb2 = self._pb.event_pb2
    self._write([event_pb2.Event(wall_time=time.time(), step=purge_step,
                                 file_version='brain.Event:2'),
                 event_pb2.Event(wall_time=time.time(), step=purge_step, session_log=(
                     event_pb2.SessionLog(status=event_pb2.SessionLog.START)))])

  def write(self, step: int, scalars: dict) -> None:
    summary = self._pb.summary_pb2.Summary(value=[
        self._pb.summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in scalars.items()])
    self._write([self._pb.event_pb2.Event(wall_time=time.time(), step=step, summary=summary)])

  def _write(self, events) -> None:
    data = b''
    for e in events:  # TFRecord framing: length, its masked CRC, the event, its masked CRC
      body = e.SerializeToString()
      header = struct.pack('<Q', len(body))
      data += (header + struct.pack('<I', self._crc(header)) + body
               + struct.pack('<I', self._crc(body)))
    _append(self._fd, data, self.path)

  def close(self) -> None:
    os.close(self._fd)


def _tensorboardx():
  """tensorboardX's protocol buffers and record checksum, imported without importing PyTorch.

  tensorboardX imports torch at import time when it is installed (requirements-bench.txt puts it
  there), only to accept torch tensors, which nothing here passes; that import cost 2.6-3.1 s of
  every launch on this project's 2-core machine. While tensorboardX loads, torch reads as absent
  unless something has imported it already (launch.bench --reference=torch)."""
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # `import torch` raises ImportError while this stands
  try:
    import tensorboardX.proto.event_pb2
    import tensorboardX.proto.summary_pb2
    from tensorboardX.record_writer import masked_crc32c
  finally:
    if hide:
      del sys.modules['torch']
  return tensorboardX.proto, masked_crc32c


def _plain(v):
  v = v.item() if hasattr(v, 'item') else v
  # NaN and infinity are not JSON: a non-finite value (a skipped step's loss) is written as null.
  return None if isinstance(v, float) and not math.isfinite(v) else v


def read_metrics(path: str) -> list:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
