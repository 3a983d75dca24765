"""launch.tpu and launch.slurm: the exact commands and script, and their runs against stand-ins.

The stand-ins (a fake gcloud whose ssh runs the command in a local "home", fake uv, srun,
scontrol and sbatch, and a python that records its arguments) take no network and no cluster.
"""

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from concurrent import futures

import pytest

from tests.conftest import ROOT, run_cli

TPU = ['--name=lm', '--zone=us-west4-a']
PROMPT = '--config.sample.prompt=In the beginning, it\'s "$HOME"'  # spaces, quotes, a $
TRAIN = ['--config=experiments/quickstart.py', '--workdir=runs/q', PROMPT]
SSH = 'gcloud compute tpus tpu-vm ssh lm --zone=us-west4-a'


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run_all(module, cases):
  """run_cli for each argument list at once: start-up dominates these runs."""
  with futures.ThreadPoolExecutor(max_workers=8) as pool:
    return list(pool.map(lambda args: run_cli(module, *args), cases))


def _one_line_error(r, contains):
  assert r.returncode == 2, r.stderr
  assert r.stderr.count('\n') == 1 and r.stderr.startswith('error: '), r.stderr
  assert contains in r.stderr, r.stderr


def _alive(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


# ----- launch.tpu, dry run


def test_tpu_create_maps_accelerator_and_runtime():
  mapping = [('v5e-32', 'v5litepod-32', 'v2-alpha-tpuv5-lite'),
             ('v5p-8', 'v5p-8', 'v2-alpha-tpuv5'),
             ('v4-16', 'v4-16', 'tpu-ubuntu2204-base'),
             ('v6e-4', 'v6e-4', 'v2-alpha-tpuv6e')]
  runs = _run_all('launch.tpu', [['create', *TPU, f'--accelerator={ours}', '--dry_run']
                                 for ours, _, _ in mapping])
  for (_, gcp, runtime), r in zip(mapping, runs):
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f'gcloud compute tpus tpu-vm create lm --zone=us-west4-a '
                        f'--accelerator-type={gcp} --version={runtime}\n')


def test_tpu_create_spot_project_and_runtime_override():
  r = run_cli('launch.tpu', 'create', *TPU, '--accelerator=v5e-32', '--spot', '--project=my-proj',
              '--version=v2-alpha-tpuv5-lite-next', '--dry_run')
  assert r.returncode == 0, r.stderr
  assert r.stdout == ('gcloud compute tpus tpu-vm create lm --zone=us-west4-a '
                      '--accelerator-type=v5litepod-32 --version=v2-alpha-tpuv5-lite-next --spot '
                      '--project=my-proj\n')


def test_tpu_run_dry_run_ships_installs_and_starts_on_every_worker(tmp_path):
  r = run_cli('launch.tpu', 'run', *TPU, '--dry_run', '--', *TRAIN, env={'TMPDIR': str(tmp_path)})
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  tarball = f'{tmp_path}/lm-research.tar.gz'
  assert lines[0] == f'git archive --format=tar.gz --output={tarball} HEAD'
  assert lines[1] == (f'gcloud compute tpus tpu-vm scp {tarball} lm:research.tar.gz '
                      '--zone=us-west4-a --worker=all')
  setup, start = (shlex.split(line) for line in lines[2:])
  assert setup[:8] == start[:8] == shlex.split(SSH) + ['--worker=all']
  assert len(lines) == 4 and len(setup) == len(start) == 9
  # The setup installs the jax[tpu] that requirements.txt pins (so the libtpu it was built for).
  assert setup[8].endswith("uv pip install --python .venv/bin/python -r requirements.txt "
                           "'jax[tpu]==0.10.2'")
  remote = start[8]
  assert remote.startswith('--command=cd research ')
  assert '; nohup .venv/bin/python -m launch.train --distributed ' in remote
  assert remote.endswith(' > train.log 2>&1 < /dev/null & echo $! > train.pid')
  # Pasted into a shell, then run by the worker's shell: the train arguments arrive verbatim.
  words = shlex.split(remote[remote.index('nohup '):remote.index(' > train.log')])
  assert words == ['nohup', '.venv/bin/python', '-m', 'launch.train', '--distributed', *TRAIN]


def test_tpu_logs_stop_delete_dry_run():
  r = run_cli('launch.tpu', 'logs', *TPU, '--worker=3', '--dry_run')
  assert r.stdout == f"{SSH} --worker=3 '--command=tail -n 100 -F research/train.log'\n", r.stderr
  r = run_cli('launch.tpu', 'logs', *TPU, '--dry_run')
  assert r.stdout.startswith(f'{SSH} --worker=0 '), r.stderr
  r = run_cli('launch.tpu', 'stop', *TPU, '--dry_run')
  assert r.stdout.startswith(f"{SSH} --worker=all '--command=if kill -0 "), r.stderr
  assert 'kill -TERM "$(cat research/train.pid' in r.stdout
  r = run_cli('launch.tpu', 'delete', *TPU, '--project=p', '--dry_run')
  assert r.stdout == 'gcloud compute tpus tpu-vm delete lm --zone=us-west4-a --quiet --project=p\n'


TPU_MISTAKES = [
    (['create', *TPU, '--accelerator=v5x-8'], "unknown accelerator 'v5x-8'"),
    (['create', *TPU, '--accelerator=v5litepod-32'], "unknown accelerator 'v5litepod-32'"),
    (['create', '--zone=us-west4-a', '--accelerator=v5e-32'], '--name is required'),
    (['create', '--name=Bad_Name', '--zone=z', '--accelerator=v5e-8'], '--name=Bad_Name'),
    (['create', '--name=lm', '--accelerator=v5e-8'], '--zone is required'),
    (['create', *TPU], 'create needs --accelerator'),
    (['launch', *TPU], "unknown command 'launch'"),
    ([*TPU], 'which command?'),
    (['run', *TPU], "run needs launch.train's arguments after --"),
    (['delete', *TPU, '--', '--workdir=x'], 'go with run, not delete'),
    (['logs', *TPU, '--spot'], '--spot goes with create, not logs'),
    (['run', 'now', *TPU, '--', '--workdir=x'], 'unexpected arguments: now'),
    (['delete', *TPU, '--bogus'], "Unknown command line flag 'bogus'"),
]


def test_tpu_bad_input_is_one_line():
  runs = _run_all('launch.tpu', [['--dry_run', *args] for args, _ in TPU_MISTAKES])
  for (_, message), r in zip(TPU_MISTAKES, runs):
    _one_line_error(r, message)


def test_tpu_without_gcloud_is_one_line(tmp_path):
  r = run_cli('launch.tpu', 'delete', *TPU, env={'PATH': str(tmp_path)})
  _one_line_error(r, 'gcloud not found on PATH')


# ----- launch.tpu against a fake gcloud

FAKE_GCLOUD = f'''#!{sys.executable}
import json, os, shutil, subprocess, sys
home, args = os.environ['FAKE_HOME'], sys.argv[1:]
with open(os.path.join(home, 'gcloud.jsonl'), 'a') as f:
  f.write(json.dumps(args) + '\\n')
verb = args[3]
if verb == os.environ.get('FAKE_FAIL'):
  sys.exit(1)
if verb == 'scp':
  shutil.copy(args[4], os.path.join(home, args[5].split(':', 1)[1]))
elif verb == 'ssh':
  command = next(a.split('=', 1)[1] for a in args if a.startswith('--command='))
  sys.exit(subprocess.call(['bash', '-c', command], cwd=home, env=dict(os.environ, HOME=home)))
'''
FAKE_UV = '''#!/bin/bash
echo "$*" >> "$HOME/uv.log"
if [ "$1" = venv ]; then mkdir -p "$4/bin" && cp "$HOME/fake_python" "$4/bin/python"; fi
'''
RECORDING_PYTHON = '''#!/bin/bash
printf '%s\\0' "$@" > args.bin
exec sleep 60
'''


@pytest.fixture
def fake_tpu(tmp_path):
  home = tmp_path / 'home'
  _write(tmp_path / 'bin' / 'gcloud', FAKE_GCLOUD)
  _write(home / '.local' / 'bin' / 'uv', FAKE_UV)
  _write(home / 'fake_python', RECORDING_PYTHON)
  env = {'PATH': f'{tmp_path / "bin"}:{os.environ["PATH"]}', 'FAKE_HOME': str(home),
         'TMPDIR': str(tmp_path)}
  return home, env


def _gcloud_calls(home):
  with open(home / 'gcloud.jsonl') as f:
    return [['gcloud', *json.loads(line)] for line in f]


def test_tpu_run_then_stop_against_fake_gcloud(fake_tpu):
  home, env = fake_tpu
  dry = run_cli('launch.tpu', 'run', *TPU, '--dry_run', '--', *TRAIN, env=env)
  r = run_cli('launch.tpu', 'run', *TPU, '--', *TRAIN, env=env)
  assert r.returncode == 0, r.stderr
  assert 'python -m launch.tpu logs --name=lm --zone=us-west4-a' in r.stdout
  # It ran exactly what --dry_run printed.
  assert _gcloud_calls(home) == [shlex.split(line) for line in dry.stdout.splitlines()[1:]]
  code = home / 'research'
  assert (code / 'launch' / 'train.py').is_file() and not (home / 'research.tar.gz').exists()
  assert (home / 'uv.log').read_text().splitlines() == [
      'venv --python 3.11 .venv',
      'pip install --python .venv/bin/python -r requirements.txt jax[tpu]==0.10.2']
  pid = int((code / 'train.pid').read_text())
  try:
    for _ in range(100):
      if (code / 'args.bin').exists() and (code / 'args.bin').read_bytes().endswith(b'\0'):
        break
      time.sleep(0.05)
    args = (code / 'args.bin').read_bytes().split(b'\0')[:-1]
    assert [a.decode() for a in args] == ['-m', 'launch.train', '--distributed', *TRAIN]
    assert _alive(pid)

    # A second run while the first is alive is refused on the worker.
    again = run_cli('launch.tpu', 'run', *TPU, '--', *TRAIN, env=env)
    assert again.returncode == 2
    assert 'launch.train is still running' in again.stderr
    assert again.stderr.splitlines()[-1] == 'error: the command above exited with status 1'

    r = run_cli('launch.tpu', 'stop', *TPU, env=env)
    assert r.returncode == 0, r.stderr
    for _ in range(100):
      if not _alive(pid):
        break
      time.sleep(0.05)
    assert not _alive(pid)
  finally:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def test_tpu_stops_at_the_first_failing_command(fake_tpu):
  home, env = fake_tpu
  r = run_cli('launch.tpu', 'run', *TPU, '--', *TRAIN, env=dict(env, FAKE_FAIL='scp'))
  assert r.returncode == 2
  assert r.stderr.splitlines()[-1] == 'error: the command above exited with status 1'
  assert [call[4] for call in _gcloud_calls(home)] == ['scp']  # no ssh after the failed copy


# ----- launch.slurm

SLURM = ['--nodes=2', '--gpus_per_node=8']


def _python():
  relative = os.path.relpath(sys.executable, ROOT)
  return sys.executable if relative.startswith('..') else relative


def test_slurm_dry_run_script(tmp_path):
  out = tmp_path / 'jobs' / 'ablation.sbatch'
  r = run_cli('launch.slurm', *SLURM, '--partition=gpu', '--time=12:00:00', '--job_name=ablation',
              f'--output={out}', '--dry_run', '--', *TRAIN)
  assert r.returncode == 0, r.stderr
  assert not out.exists()
  lines = r.stdout.splitlines()
  assert lines[0] == '#!/bin/bash'
  assert [l for l in lines if l.startswith('#SBATCH')] == [
      '#SBATCH --job-name=ablation', '#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=1',
      '#SBATCH --gpus-per-node=8', '#SBATCH --partition=gpu', '#SBATCH --time=12:00:00',
      f'#SBATCH --output={tmp_path}/jobs/%x-%j.out']
  # No working directory of this machine: the job runs where sbatch was called (the root).
  assert f'{ROOT}/' not in r.stdout and '--chdir' not in r.stdout
  assert [l for l in lines if l.startswith(('export', 'head_node'))] == [
      'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
      'export JAX_COORDINATOR_ADDRESS="$head_node:$((20000 + SLURM_JOB_ID % 20000))"',
      'export JAX_NUM_PROCESSES="$SLURM_NNODES"']
  srun = r.stdout[r.stdout.index('\nsrun ') + 1:].replace('\\\n', '')
  assert shlex.split(srun) == [
      'srun', '--kill-on-bad-exit=1', 'bash', '-c',
      'export JAX_PROCESS_ID="$SLURM_PROCID"; exec "$@"', 'bash',
      _python(), '-m', 'launch.train', *TRAIN]
  assert 'launch.slurm --nodes=2 --gpus_per_node=8 --partition=gpu' in lines[1]
  assert '--dry_run' not in r.stdout
  script = tmp_path / 'check.sbatch'
  script.write_text(r.stdout)
  check = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True)
  assert check.returncode == 0, check.stderr


def test_slurm_script_gives_each_task_its_rank(tmp_path):
  """The script under a fake srun (one run per node) and scontrol: what each process sees."""
  r = run_cli('launch.slurm', *SLURM, '--dry_run', '--', *TRAIN)
  assert '\n#SBATCH --output=runs/slurm/%x-%j.out\n' in r.stdout  # relative to the root
  script = tmp_path / 'job.sbatch'
  script.write_text(r.stdout)
  _write(tmp_path / 'bin' / 'scontrol', '#!/bin/bash\nprintf "node-a\\nnode-b\\n"\n')
  # Runs the command once per node, with python swapped for a recorder.
  _write(tmp_path / 'bin' / 'srun', '''#!/bin/bash
while [[ $1 == --* ]]; do shift; done
for rank in $(seq 0 $((SLURM_NNODES - 1))); do
  SLURM_PROCID=$rank "$1" "$2" "$3" "$4" "$FAKE_PYTHON" "${@:6}"
done
''')
  _write(tmp_path / 'python', '''#!/bin/bash
printf '%s\\0' "$JAX_COORDINATOR_ADDRESS" "$JAX_NUM_PROCESSES" "$JAX_PROCESS_ID" "$@" \\
  > "$RECORDS/rank$JAX_PROCESS_ID"
''')
  env = dict(os.environ, PATH=f'{tmp_path / "bin"}:{os.environ["PATH"]}', RECORDS=str(tmp_path),
             FAKE_PYTHON=str(tmp_path / 'python'), SLURM_JOB_NODELIST='node-[a-b]',
             SLURM_NNODES='2', SLURM_JOB_ID='123')
  # sbatch runs the job in the directory it was submitted from: the repository root here.
  run = subprocess.run(['bash', str(script)], env=env, capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 0, run.stderr
  for rank in (0, 1):
    seen = (tmp_path / f'rank{rank}').read_bytes().split(b'\0')[:-1]
    assert [s.decode() for s in seen] == ['node-a:20123', '2', str(rank), '-m', 'launch.train',
                                          *TRAIN]
  # Submitted from elsewhere, it says so before starting anything.
  for record in tmp_path.glob('rank*'):
    record.unlink()
  elsewhere = subprocess.run(['bash', str(script)], env=env, capture_output=True, text=True,
                             cwd=tmp_path)
  assert elsewhere.returncode == 2
  assert elsewhere.stderr == 'error: submit this script from the repository root\n'
  assert not list(tmp_path.glob('rank*'))


def test_slurm_writes_and_submits(tmp_path):
  _write(tmp_path / 'bin' / 'sbatch',
         '#!/bin/bash\necho "$@" > "$RECORDS/sbatch.args"\necho "Submitted batch job 42"\n')
  out = tmp_path / 'jobs' / 'run.sbatch'
  env = {'PATH': f'{tmp_path / "bin"}:{os.environ["PATH"]}', 'RECORDS': str(tmp_path)}
  r = run_cli('launch.slurm', *SLURM, f'--output={out}', '--', *TRAIN, env=env)
  assert r.returncode == 0, r.stderr
  assert 'Submitted batch job 42' in r.stdout
  assert (tmp_path / 'sbatch.args').read_text() == f'{out}\n'
  dry = run_cli('launch.slurm', *SLURM, f'--output={out}', '--dry_run', '--', *TRAIN)
  assert out.read_text() == dry.stdout


def test_slurm_without_sbatch_writes_the_script_and_says_so(tmp_path):
  out = tmp_path / 'run.sbatch'
  r = run_cli('launch.slurm', *SLURM, f'--output={out}', '--', *TRAIN, env={'PATH': str(tmp_path)})
  _one_line_error(r, 'sbatch not found on PATH')
  assert out.read_text().startswith('#!/bin/bash\n')


SLURM_MISTAKES = [
    (['--gpus_per_node=8', '--', '--workdir=x'], '--nodes is required'),
    (['--nodes=2', '--', '--workdir=x'], '--gpus_per_node is required'),
    (['--nodes=0', '--gpus_per_node=8', '--', '--workdir=x'], '--nodes=0: must be at least 1'),
    ([*SLURM, '--time=tomorrow', '--', '--workdir=x'], '--time=tomorrow'),
    ([*SLURM, '--job_name=a b', '--', '--workdir=x'], '--job_name=a b'),
    ([*SLURM], "launch.train's arguments go after --"),
    ([*SLURM, 'now', '--', '--workdir=x'], 'unexpected arguments: now'),
]


def test_slurm_bad_input_is_one_line():
  runs = _run_all('launch.slurm', [['--dry_run', *args] for args, _ in SLURM_MISTAKES])
  for (_, message), r in zip(SLURM_MISTAKES, runs):
    _one_line_error(r, message)
