"""The sharded train step on 8 simulated CPU devices: every mesh trains like one device.

The default suite trains on (2, 2, 2), which shards over all three axes at once; the `slow`
marker adds the meshes that put all 8 devices on one axis and (2, 4, 1)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli_env

STEPS = 6


DEFAULT = '(2, 2, 2)'
SLOW = ('(8, 1, 1)', '(2, 4, 1)', '(1, 1, 8)')


def train_on(cache_dir, shapes):
  env = cli_env(XLA_FLAGS='--xla_force_host_platform_device_count=8')
  named = ','.join('x'.join(s.strip('()').split(', ')) for s in shapes)
  r = subprocess.run([sys.executable, '-m', 'tests.mesh_worker', cache_dir, str(STEPS), named],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def meshes(cache_dir, request):
  """One device and the meshes the selected tests ask for, in one process."""
  shapes = {item.callspec.params['shape'] for item in request.session.items
            if 'meshes' in item.fixturenames}
  return train_on(cache_dir, sorted(shapes))


def mesh_params(shapes, marks=()):
  return [pytest.param(s, marks=marks) for s in shapes]


ALL = mesh_params([DEFAULT]) + mesh_params(SLOW, pytest.mark.slow)


@pytest.mark.parametrize('shape', ALL)
def test_every_mesh_trains_like_one_device(meshes, shape):
  """Same losses at every step and the same eval loss as one device, to float32 reordering
  (relative 1e-5; measured differences are about 3e-7)."""
  one, got = meshes['(1, 1, 1)'], meshes[shape]
  assert len(got['losses']) == STEPS
  for a, b in zip(got['losses'], one['losses']):
    assert b == pytest.approx(a, rel=1e-5)
  assert one['losses'][-1] < one['losses'][0] - 0.3  # it does train
  assert got['eval_loss'] == pytest.approx(one['eval_loss'], rel=1e-5)


# Global shapes: embedding [vocab 512, embed 64]; query [layers 2, embed 64, heads 8, kv 8];
# MLP in [layers 2, embed 64, mlp 256]; norm scale [layers 2, embed 64]. Default rules: embed over
# fsdp; vocab, heads and mlp over tensor; layers and kv whole.
SHARDS = {
    '(8, 1, 1)': ([512, 64], [2, 64, 8, 8], [2, 64, 256], [2, 64]),
    '(2, 4, 1)': ([512, 16], [2, 16, 8, 8], [2, 16, 256], [2, 16]),
    '(2, 2, 2)': ([256, 32], [2, 32, 4, 8], [2, 32, 128], [2, 32]),
    '(1, 1, 8)': ([64, 64], [2, 64, 1, 8], [2, 64, 32], [2, 64]),
}


@pytest.mark.parametrize('shape', ALL)
def test_parameter_shards_have_the_expected_shapes(meshes, shape):
  got = meshes[shape]['shards']
  names = ("['embed']['embedding']", "['layers']['attention']['query']['kernel']",
           "['layers']['mlp']['wi']['kernel']", "['layers']['norm_mlp']['scale']")
  for name, want in zip(names, SHARDS[shape]):
    assert got[name]['shard'] == want, name
    assert got[name]['devices'] == 8
