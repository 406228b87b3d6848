"""The authors' checkpoints, end to end, without the network: layout, conversion, loading, download, safety.

The authors' networks are rebuilt literally in ``tests.authors_reference`` and pinned to the tensor list of
their released files (``data/official_layout``). Filled with random weights *and* random BN statistics,
they stand in for the real checkpoints: if converting such a state dict and loading it into our model
reproduces their logits, it reproduces them for the real files too.

Inputs are 112 px (and 112 x 144): the authors' code cannot run at 96 px and below (the r = 4 pooling meets a
3 x 3 map in stage 4), and above that size our SCConv2d pools exactly as theirs does.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import timm
import torch

import scnet
from scnet import CheckpointError
from scnet.weights import (OFFICIAL_WEIGHTS, convert_authors_state_dict, load_into, official, pretrained_state_dict,
                           read_checkpoint, read_state_dict, save_state_dict)
from tests.authors_reference import (LAYOUTS, MIN_INPUT, build_reference, layout_table, load_layout,
                                     random_authors_state_dict, randomize_)

TOLERANCE = 1e-5
SQUARE, NON_SQUARE = (112, 112), (112, 144)
SEEDS = {name: i + 1 for i, name in enumerate(LAYOUTS)}


def rel_diff(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest expected magnitude."""
    return ((expected - actual).abs().max() / expected.abs().max()).item()


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_input(size, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def random_reference(name: str) -> torch.nn.Module:
    return randomize_(build_reference(name), seed=SEEDS[name]).eval()


@pytest.fixture(scope='module')
def scnet50_ref():
    """The authors' scnet50 with random weights and statistics, shared by the loading tests."""
    return random_reference('scnet50')


@pytest.fixture(scope='module')
def scnet50_expected(scnet50_ref):
    """Their logits on the 112-px input."""
    return logits(scnet50_ref, random_input(SQUARE))


def assert_matches_reference(model, expected):
    diff = rel_diff(expected, logits(model, random_input(SQUARE)))
    assert diff < TOLERANCE, diff


# --- the reference is the authors' network -------------------------------------------------------------


@pytest.mark.parametrize('name', LAYOUTS)
def test_reference_matches_released_layout(name):
    """Names, order, shapes and dtypes of every tensor equal their released checkpoint's."""
    with torch.device('meta'):
        ref = build_reference(name)
    got = [(k, tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in ref.state_dict().items()]
    assert got == layout_table(name)
    assert sum(p.numel() for p in ref.parameters()) == load_layout(name)['num_params']


def test_reference_fails_below_min_input_like_theirs(scnet50_ref):
    """Documents why the tests use 112 px: their fixed r x r pooling cannot pool a 3 x 3 map."""
    with pytest.raises(RuntimeError):
        logits(scnet50_ref, random_input((MIN_INPUT - 1,) * 2, batch=1))


# --- conversion ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', LAYOUTS)
def test_converted_weights_reproduce_authors_logits(name, request):
    ref = request.getfixturevalue('scnet50_ref') if name == 'scnet50' else random_reference(name)
    ours = scnet.create_model(name).eval()
    ours.load_state_dict(convert_authors_state_dict(ref.state_dict()))  # strict: every key used, none missing
    for size, batch in ((SQUARE, 2), (NON_SQUARE, 1)):
        x = random_input(size, batch, seed=SEEDS[name])
        expected, actual = logits(ref, x), logits(ours, x)
        assert actual.shape == (batch, 1000)
        diff = rel_diff(expected, actual)
        print(f'{name} {size[0]}x{size[1]}: max relative logit difference {diff:.2e}')
        assert diff < TOLERANCE, (name, size, diff)


def test_nearest_upsampling_is_what_makes_it_match(scnet50_ref, scnet50_expected):
    """The comparison is sensitive: the paper's bilinear up-sampling with the same weights is far off."""
    ours = scnet.create_model('scnet50', upsample='bilinear')
    ours.load_state_dict(convert_authors_state_dict(scnet50_ref.state_dict()))
    assert rel_diff(scnet50_expected, logits(ours, random_input(SQUARE))) > 1e-3


@pytest.mark.parametrize('name', LAYOUTS)
def test_converted_layout_is_exactly_ours(name):
    """From the JSON alone: every converted key, shape and dtype is our model's, and nothing else."""
    converted = convert_authors_state_dict(random_authors_state_dict(name))
    with torch.device('meta'):
        own = scnet.create_model(name).state_dict()
    assert {k: (tuple(v.shape), v.dtype) for k, v in converted.items()} == \
        {k: (tuple(v.shape), v.dtype) for k, v in own.items()}
    assert sum(v.numel() for k, v in converted.items() if 'running' not in k and 'num_batches' not in k) == \
        load_layout(name)['num_params']


def test_official_addresses_are_the_released_files():
    """The addresses (with their sha256 prefixes) are those of the released files, one per model; the
    authors' first scnet.py pointed scnet50 at the scnet101 file."""
    for name in LAYOUTS:
        url = load_layout(name)['url']
        assert OFFICIAL_WEIGHTS.get(name) == url
        if url:
            assert timm.models.get_pretrained_cfg(name).url == url


def test_incomplete_authors_checkpoint_names_the_unpaired_key(tmp_path):
    state = random_authors_state_dict('scnet50')
    del state['layer2.3.conv1_b.weight']
    with pytest.raises(CheckpointError, match=r'layer2\.3\.conv1_b\.weight'):
        convert_authors_state_dict(state)
    path = tmp_path / 'incomplete.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r'layer2\.3\.conv1_b\.weight'):
        scnet.create_model('scnet50', checkpoint=str(path))


def test_a_checkpoint_of_another_network_is_one_line_with_the_way_out(tmp_path):
    """load_into (create_model(checkpoint=...), the commands): the problem and the way out on one line, the
    differing keys counted with an example of each, not listed by the hundred."""
    path = tmp_path / 'scnet26.safetensors'
    scnet.weights.save_state_dict(scnet.create_model('scnet26_cifar', num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        scnet.create_model('resnet26_cifar', checkpoint=str(path))
    message = str(info.value)
    assert '\n' not in message and message.startswith(f'{path} does not fit the model: check that the model name')
    assert 'missing from the checkpoint (e.g. layer1.0.conv2.weight)' in message
    assert 'not in the network (e.g. layer1.0.conv2.k1.weight)' in message
    with pytest.raises(CheckpointError, match='the checkpoint has 10 classes: build the model with num_classes=10'):
        scnet.weights.load_into(scnet.create_model('scnet26_cifar', num_classes=3), scnet.weights.read_state_dict(path))


def test_incomplete_authors_checkpoint_names_the_orphan_half():
    state = random_authors_state_dict('scnet50')
    del state['layer2.3.conv1_b.weight']
    with pytest.raises(CheckpointError, match=r'layer2\.3\.conv1_a\.weight'):
        convert_authors_state_dict(state)


# --- create_model(checkpoint=PATH) ---------------------------------------------------------------------


@pytest.mark.parametrize('layout', ['authors_pth', 'ours_safetensors'])
def test_checkpoint_of_either_layout_loads(layout, tmp_path, scnet50_ref, scnet50_expected):
    state = scnet50_ref.state_dict()
    if layout == 'authors_pth':
        path = tmp_path / 'scnet50_authors.pth'
        torch.save(state, path)
    else:
        path = save_state_dict(convert_authors_state_dict(state), tmp_path / 'scnet50.safetensors')
    assert_matches_reference(scnet.create_model('scnet50', checkpoint=str(path)), scnet50_expected)


@pytest.mark.parametrize('wrapper', ['state_dict', 'model'])
def test_wrapped_and_prefixed_checkpoint_loads(wrapper, tmp_path, scnet50_ref):
    """A training checkpoint ({'epoch': .., wrapper: {'module.' + name: tensor}}) in the authors' layout."""
    state = {'module.' + k: v for k, v in scnet50_ref.state_dict().items()}
    path = tmp_path / 'train.pth'
    torch.save({'epoch': 90, wrapper: state}, path)
    model = scnet.create_model('scnet50', checkpoint=str(path))
    expected = convert_authors_state_dict(scnet50_ref.state_dict())
    got = model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


# --- pretrained=True: download, hash check, cache, mirror ----------------------------------------------


@pytest.fixture(scope='module')
def released_scnet50(tmp_path_factory, scnet50_ref):
    """The random scnet50 saved as the authors' file: ``scnet50-<sha256[:8]>.pth`` (module-wide, read only)."""
    folder = tmp_path_factory.mktemp('release')
    draft = folder / 'draft.pth'
    torch.save(scnet50_ref.state_dict(), draft)
    return draft.rename(folder / f'scnet50-{sha256(draft)[:8]}.pth')


@pytest.fixture
def source(tmp_path, released_scnet50):
    """A private copy of the released file, in a folder of its own (tests may delete it)."""
    folder = tmp_path / 'server'
    folder.mkdir()
    return Path(shutil.copy(released_scnet50, folder))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / 'cache'
    monkeypatch.setenv('SCNET_CACHE', str(folder))
    monkeypatch.delenv('SCNET_WEIGHTS_MIRROR', raising=False)
    return folder


@pytest.fixture
def published(source, cache, monkeypatch):
    """scnet50's official address points at the local copy."""
    monkeypatch.setitem(official.OFFICIAL_WEIGHTS, 'scnet50', source.as_uri())
    return source


def test_pretrained_downloads_verifies_and_caches(published, cache, scnet50_expected):
    assert_matches_reference(scnet.create_model('scnet50', pretrained=True), scnet50_expected)
    cached = cache / published.name
    assert cached.is_file() and sha256(cached) == sha256(published)
    published.unlink()  # the server is gone: the cached copy must serve
    assert_matches_reference(scnet.create_model('scnet50', pretrained=True), scnet50_expected)


def test_timm_create_model_pretrained(published, cache, scnet50_expected):
    assert_matches_reference(timm.create_model('scnet50', pretrained=True), scnet50_expected)


def test_timm_local_file_overlay_reads_the_authors_file_without_downloading(source, cache, scnet50_expected,
                                                                             monkeypatch):
    """timm's way to point pretrained=True at a local file (``pretrained_cfg_overlay=dict(file=...)``): the
    authors' layout is converted, and the official address (unreachable here) is not tried."""
    monkeypatch.setitem(official.OFFICIAL_WEIGHTS, 'scnet50', 'file:///nowhere/scnet50-00000000.pth')
    model = timm.create_model('scnet50', pretrained=True, pretrained_cfg_overlay=dict(file=str(source)))
    assert_matches_reference(model, scnet50_expected)
    assert not cache.exists() or not any(cache.iterdir())
    with pytest.raises(scnet.CheckpointError, match='missing.pth'):
        timm.create_model('scnet50', pretrained=True, pretrained_cfg_overlay=dict(file=str(cache / 'missing.pth')))


def test_pretrained_with_new_classifier(published, cache, scnet50_ref):
    model = scnet.create_model('scnet50', pretrained=True, num_classes=10)
    assert model.fc.weight.shape == (10, 2048)
    expected = convert_authors_state_dict(scnet50_ref.state_dict())
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items() if not k.startswith('fc.'))


def test_pretrained_features_only(published, cache, scnet50_ref):
    backbone = scnet.create_model('scnet50', pretrained=True, features_only=True)
    x = random_input(SQUARE, batch=1)
    features = logits(backbone, x)
    assert [f.shape[1] for f in features] == [64, 256, 512, 1024, 2048]
    with torch.no_grad():
        r = scnet50_ref
        expected = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))))
    assert rel_diff(expected, features[-1]) < TOLERANCE


@pytest.mark.parametrize('name', ['scnet50', 'scnet50_v1d'])
def test_pretrained_stem_adapts_to_in_chans(name, cache, tmp_path, monkeypatch, request):
    """timm adapts the first conv named by ``pretrained_cfg['first_conv']`` (``conv1.0`` in the v1d deep stem)
    to ``in_chans``: one channel gets the sum of the three RGB filters, every other tensor loads unchanged."""
    ref = request.getfixturevalue('scnet50_ref') if name == 'scnet50' else random_reference(name)
    draft = tmp_path / 'draft.pth'
    torch.save(ref.state_dict(), draft)
    released = draft.rename(tmp_path / f'{name}-{sha256(draft)[:8]}.pth')
    monkeypatch.setitem(official.OFFICIAL_WEIGHTS, name, released.as_uri())
    model = scnet.create_model(name, pretrained=True, in_chans=1)
    stem = model.pretrained_cfg['first_conv']
    assert stem == ('conv1.0' if name.endswith('_v1d') else 'conv1')
    expected = convert_authors_state_dict(ref.state_dict())
    got = model.state_dict()
    assert got[f'{stem}.weight'].shape[1] == 1
    assert torch.allclose(got[f'{stem}.weight'], expected[f'{stem}.weight'].sum(dim=1, keepdim=True))
    assert all(torch.equal(got[k], v) for k, v in expected.items() if k != f'{stem}.weight')
    assert logits(model, torch.randn(1, 1, *SQUARE)).shape == (1, 1000)


def test_mirror_replaces_the_host(source, cache, monkeypatch, scnet50_expected):
    monkeypatch.setitem(official.OFFICIAL_WEIGHTS, 'scnet50', f'https://unreachable.invalid/scnet/{source.name}')
    monkeypatch.setenv('SCNET_WEIGHTS_MIRROR', source.parent.as_uri())
    assert official.official_url('scnet50') == source.as_uri()
    assert_matches_reference(scnet.create_model('scnet50', pretrained=True), scnet50_expected)
    assert (cache / source.name).is_file()


def test_mirror_may_be_a_plain_folder_and_a_path_is_no_address(source, cache, monkeypatch):
    """The docs say: point $SCNET_WEIGHTS_MIRROR at a folder; a folder path becomes a file:// address."""
    monkeypatch.setitem(official.OFFICIAL_WEIGHTS, 'scnet50', f'https://unreachable.invalid/scnet/{source.name}')
    monkeypatch.setenv('SCNET_WEIGHTS_MIRROR', str(source.parent))
    assert official.official_url('scnet50') == source.as_uri()
    assert official.fetch(official.official_url('scnet50'), progress=False).is_file()
    with pytest.raises(CheckpointError, match='not a download address .* give an http.s.:// or file:// address'):
        official.fetch(str(source.with_name('scnet50-dc6a7e87.pth')), directory=cache / 'other', progress=False)


def test_hash_mismatch_is_refused_and_not_cached(source, cache, monkeypatch):
    wrong = source.with_name('scnet50-00000000.pth')
    assert not sha256(source).startswith('00000000')
    source.rename(wrong)
    monkeypatch.setitem(official.OFFICIAL_WEIGHTS, 'scnet50', wrong.as_uri())
    with pytest.raises(CheckpointError, match='sha256'):
        scnet.create_model('scnet50', pretrained=True)
    assert not cache.exists() or not any(cache.iterdir())


def test_corrupt_cache_entry_is_downloaded_again(published, cache, scnet50_ref):
    cache.mkdir()
    cached = cache / published.name
    cached.write_bytes(b'interrupted download')
    state = pretrained_state_dict('scnet50', progress=False)
    assert sha256(cached) == sha256(published)
    expected = convert_authors_state_dict(scnet50_ref.state_dict())
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_a_mismatched_cache_entry_is_kept_until_a_download_replaces_it(cache, tmp_path):
    """Deleted before the download, a file in the cache folder (a user's own, under a name with a hash) was lost
    when the download then failed."""
    cache.mkdir()
    kept = cache / 'mine-abcdef12.pth'
    kept.write_bytes(b'a file of the user')
    with pytest.raises(CheckpointError, match='download failed'):
        official.fetch((tmp_path / 'gone' / kept.name).as_uri(), directory=cache, progress=False)
    assert kept.read_bytes() == b'a file of the user'


def test_unreachable_address_is_a_checkpoint_error(cache, monkeypatch, tmp_path):
    monkeypatch.setitem(official.OFFICIAL_WEIGHTS, 'scnet50', (tmp_path / 'gone-12345678.pth').as_uri())
    with pytest.raises(CheckpointError, match=r'checkpoint=PATH in Python, --init PATH to scnet train, '
                                              r'--checkpoint PATH to the other commands'):
        pretrained_state_dict('scnet50', progress=False)


@pytest.mark.parametrize('name', ['scnext50_32x4d', 'scnet101_v1d'])
def test_pretrained_without_released_weights_names_the_released_ones(name, cache):
    with pytest.raises(CheckpointError) as info:
        scnet.create_model(name, pretrained=True)
    assert name in str(info.value) and 'leave out --pretrained' in str(info.value)
    assert all(released in str(info.value) for released in ('scnet50', 'scnet50_v1d', 'scnet101'))


# --- safe loading --------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'echo pwned > {self.marker}',)


def test_payload_is_live(tmp_path):
    """Control for the next test: an unrestricted unpickler really does run it."""
    marker = tmp_path / 'control'
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')
@pytest.mark.parametrize('writer', ['torch.save', 'pickle.dump'])
def test_malicious_pickle_is_refused_without_running(writer, tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    obj = {'state_dict': {'conv1.weight': torch.zeros(1)}, 'hook': _Payload(marker)}
    if writer == 'torch.save':
        torch.save(obj, path)
    else:
        with open(path, 'wb') as f:
            pickle.dump(obj, f)
    with pytest.raises(CheckpointError, match='run code'):
        scnet.create_model('scnet50', checkpoint=str(path))
    with pytest.raises(CheckpointError, match='run code'):
        read_checkpoint(path)
    assert not marker.exists()


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def test_truncated_pth_is_a_checkpoint_error(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.save({'w': torch.randn(4096)}, path)
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        read_state_dict(_truncated(path))
    with pytest.raises(CheckpointError):
        scnet.create_model('scnet50', checkpoint=str(path))


def test_truncated_safetensors_is_a_checkpoint_error(tmp_path):
    path = save_state_dict({'w': torch.randn(4096)}, tmp_path / 'weights.safetensors')
    with pytest.raises(CheckpointError, match='safetensors'):
        read_state_dict(_truncated(path))


def test_garbage_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / 'weights.pth'
    path.write_bytes(b'hello world, not a checkpoint' * 8)
    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match='no such'):
        scnet.create_model('scnet50', checkpoint=str(tmp_path / 'absent.pth'))


# --- reports of keys that do not fit -------------------------------------------------------------------


def test_key_report_names_missing_extra_and_misshaped_keys(tmp_path):
    state = scnet.create_model('scnet26').state_dict()
    del state['layer2.1.conv2.k3.weight']
    state['layer9.0.extra.weight'] = torch.zeros(3)
    state['layer1.0.conv2.k2.weight'] = torch.zeros(5, 5, 3, 3)
    path = save_state_dict(state, tmp_path / 'bad.safetensors')
    with pytest.raises(CheckpointError) as info:
        scnet.create_model('scnet26', checkpoint=str(path))
    for key in ('layer2.1.conv2.k3.weight', 'layer9.0.extra.weight', 'layer1.0.conv2.k2.weight'):
        assert key in str(info.value)


def test_key_report_suggests_num_classes(tmp_path):
    ten = scnet.create_model('scnet26', num_classes=10)
    with pytest.raises(CheckpointError, match='num_classes=10'):
        load_into(scnet.create_model('scnet26'), ten.state_dict(), source='ten classes')


@pytest.mark.parametrize('kwargs', [dict(), dict(channels=(16, 32, 64, 128)), dict(num_classes=10)])
def test_key_report_names_the_network_not_num_classes_when_the_body_differs(kwargs, tmp_path):
    """A checkpoint of another stem or width also has a classifier of another shape; the way out is the
    network's name and arguments, never a num_classes it already has."""
    path = save_state_dict(scnet.create_model('scnet26_cifar').state_dict(), tmp_path / 'cifar.safetensors')
    name = 'scnet26' if not kwargs.get('channels') else 'scnet26_cifar'
    with pytest.raises(CheckpointError) as info, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter('always')
        scnet.create_model(name, checkpoint=str(path), **kwargs)
    if kwargs.get('channels'):  # the network asked for, at other widths: the widths of the weights are named
        assert 'its stages are channels=(32, 64, 128, 256) wide, where this scnet26_cifar has (16, 32, 64, 128)' \
            in str(info.value)
    else:
        assert 'check that the model name and its arguments (channels=, stem, in_chans) match' in str(info.value)
    assert 'num_classes=' not in str(info.value)
    # nor a warning, before the error, that the classifier is being replaced for fine-tuning
    assert not [w for w in said if 'classifier' in str(w.message)], [str(w.message) for w in said]


def test_checkpoint_adapts_the_stem_to_in_chans(tmp_path):
    """checkpoint= adapts the first convolution to in_chans as pretrained=True does (timm's adapt_input_conv):
    one channel gets the sum of the RGB filters, four get them repeated and scaled; the rest loads unchanged."""
    rgb = scnet.create_model('scnet26_cifar', num_classes=5)
    path = save_state_dict(rgb.state_dict(), tmp_path / 'rgb.safetensors')
    grey = scnet.create_model('scnet26_cifar', checkpoint=str(path), in_chans=1)
    torch.testing.assert_close(grey.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    four = scnet.create_model('scnet26_cifar', checkpoint=str(path), in_chans=4)
    torch.testing.assert_close(four.conv1.weight[:, :3], rgb.conv1.weight * 3 / 4)
    own = rgb.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in grey.state_dict().items() if k != 'conv1.weight')
    assert grey.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_timm_file_overlay_refuses_weights_of_another_network(tmp_path):
    """timm loads pretrained weights non-strictly wherever the class count differs, which would leave every layer
    the file lacks randomly initialised behind a log line: the zoo checks the fit first, as checkpoint= does."""
    plain = save_state_dict(scnet.create_model('resnet26_cifar', num_classes=10).state_dict(),
                            tmp_path / 'r.safetensors')
    for kwargs in (dict(num_classes=10), dict()):
        with pytest.raises(scnet.weights.fit.WeightsMismatchError) as info:
            timm.create_model('scnet26_cifar', pretrained=True, pretrained_cfg_overlay=dict(file=str(plain)), **kwargs)
        message = str(info.value)
        assert message.startswith(f'{plain} does not fit scnet26_cifar: check that the model name')
        assert 'missing from the checkpoint (e.g. layer1.0.conv2.k1.weight)' in message


def test_timm_file_overlay_keeps_the_classifier_of_as_many_classes(tmp_path):
    """The file's class count becomes the config's: a model of that count (timm's default for it, or asked for)
    gets the file's classifier; another count gets a fresh one and the rest of the file (fine-tuning)."""
    ten = scnet.create_model('scnet26_cifar', num_classes=10)
    path = save_state_dict(ten.state_dict(), tmp_path / 'ten.safetensors')
    overlay = dict(file=str(path))
    for model in (timm.create_model('scnet26_cifar', pretrained=True, pretrained_cfg_overlay=overlay),
                  timm.create_model('scnet26_cifar', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10)):
        assert all(torch.equal(v, ten.state_dict()[k]) for k, v in model.state_dict().items())
    four = timm.create_model('scnet26_cifar', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=4)
    assert four.fc.out_features == 4
    torch.testing.assert_close(four.layer4[1].conv2.k4.weight, ten.layer4[1].conv2.k4.weight)
    grey = timm.create_model('scnet26_cifar', pretrained=True, pretrained_cfg_overlay=overlay, in_chans=1)
    torch.testing.assert_close(grey.conv1.weight, ten.conv1.weight.sum(dim=1, keepdim=True))


def test_checkpoint_class_count_is_the_default_and_another_count_fine_tunes(tmp_path):
    ten = scnet.create_model('scnet26', num_classes=10)
    path = save_state_dict(ten.state_dict(), tmp_path / 'ten.safetensors')
    assert scnet.create_model('scnet26', checkpoint=str(path)).fc.out_features == 10
    with pytest.warns(UserWarning, match='10 classes and the model 3'):
        three = scnet.create_model('scnet26', checkpoint=str(path), num_classes=3)
    assert three.fc.out_features == 3
    torch.testing.assert_close(three.layer4[1].conv2.k4.weight, ten.layer4[1].conv2.k4.weight)


def test_a_training_run_folder_stands_for_its_checkpoint(tmp_path, capsys):
    """A run folder given where a checkpoint file belongs (create_model, convert, eval, export, --init) reads its
    model.safetensors, else its last.pt; a folder with neither says what it lacks."""
    from scnet.cli.main import main
    from scnet.weights.io import checkpoint_file

    net = scnet.create_model('scnet26_cifar', num_classes=3)
    run = tmp_path / 'run'
    save_state_dict(net.state_dict(), run / 'model.safetensors')
    assert checkpoint_file(run) == run / 'model.safetensors'
    loaded = scnet.create_model('scnet26_cifar', checkpoint=str(run))
    assert loaded.fc.out_features == 3 and torch.equal(loaded.fc.weight, net.fc.weight)
    unfinished = tmp_path / 'unfinished'
    unfinished.mkdir()
    torch.save({'model': net.state_dict()}, unfinished / 'last.pt')
    assert checkpoint_file(unfinished) == unfinished / 'last.pt'
    assert torch.equal(scnet.create_model('scnet26_cifar', checkpoint=str(unfinished)).fc.weight, net.fc.weight)
    assert main(['convert', str(run), str(tmp_path / 'copy.safetensors')]) == 0
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r'empty is a folder with neither model.safetensors nor last.pt'):
        scnet.create_model('scnet26_cifar', checkpoint=str(empty))
    assert main(['convert', str(empty), str(tmp_path / 'never.safetensors')]) == 2
    assert 'is a folder with neither model.safetensors nor last.pt' in capsys.readouterr().err


def test_weights_and_training_states_get_the_usual_permissions(tmp_path):
    """Written through a private temporary file, they still end up as a plain open() would make them under the
    umask (readable by the team on a shared machine), not readable by their owner only."""
    import os
    import stat

    from scnet.train.state import save_atomic

    old = os.umask(0o022)
    try:
        weights = save_state_dict({'w': torch.zeros(2)}, tmp_path / 'model.safetensors')
        save_atomic({'epoch': 1}, tmp_path / 'last.pt')
        os.umask(0o077)
        private = save_state_dict({'w': torch.zeros(2)}, tmp_path / 'private.safetensors')
    finally:
        os.umask(old)
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / 'last.pt').stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_checkpoint_without_batch_norm_counters_loads(tmp_path):
    """Older and third-party files lack BatchNorm's num_batches_tracked; load_state_dict accepts that, and so
    does the fit check (it used to send the user checking the model name and channels)."""
    from scnet.weights import save_state_dict

    model = scnet.create_model('scnet26_cifar', num_classes=3, channels=[8, 16, 32, 64]).eval()
    weights = {k: v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    path = save_state_dict(weights, tmp_path / 'no_counters.safetensors')
    loaded = scnet.create_model('scnet26_cifar', checkpoint=path, channels=[8, 16, 32, 64]).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    del weights['bn1.running_mean']  # any other missing tensor is still a misfit
    with pytest.raises(CheckpointError, match='bn1.running_mean'):
        scnet.create_model('scnet26_cifar', checkpoint=save_state_dict(weights, tmp_path / 'bad.safetensors'),
                           channels=[8, 16, 32, 64])


def test_save_state_dict_names_what_it_cannot_write_and_copies_shared_tensors(tmp_path):
    from safetensors.torch import load_file
    from torch import nn

    from scnet.errors import InvalidArgumentTypeError
    from scnet.weights import save_state_dict

    conv = nn.Conv2d(4, 4, 3, bias=False)
    shared = nn.ModuleDict({'a': conv, 'b': conv})  # one conv under two names: safetensors refuses shared memory
    path = save_state_dict(shared.state_dict(), tmp_path / 'shared.safetensors')
    restored = nn.ModuleDict({'a': nn.Conv2d(4, 4, 3, bias=False), 'b': nn.Conv2d(4, 4, 3, bias=False)})
    restored.load_state_dict(load_file(path))
    assert torch.equal(restored['a'].weight, conv.weight) and torch.equal(restored['b'].weight, conv.weight)
    for args, message in (((shared,), r'not the ModuleDict: pass model.state_dict\(\)'),
                          (({'w': torch.ones(1), 'epoch': 3},), "'epoch' is a int"),
                          (([torch.ones(1)],), 'a mapping of names to tensors, got list')):
        with pytest.raises(InvalidArgumentTypeError, match=message):
            save_state_dict(*args, tmp_path / 'x.safetensors')
    with pytest.raises(InvalidArgumentTypeError, match="'epoch' is not one: json.dumps the value"):
        save_state_dict({'w': torch.ones(1)}, tmp_path / 'x.safetensors', metadata={'epoch': 3})
    assert not (tmp_path / 'x.safetensors').exists()


@pytest.mark.parametrize('name', ['scnet26_cifar', 'resnet26'])
def test_weights_of_other_widths_recording_nothing_name_the_channels_that_fit(name, tmp_path):
    """Weights of a narrower network saved without their options: the error reads the per-stage widths off them
    (confirmed on a network built on the meta device) and names the argument; with it they load exactly."""
    narrow = scnet.create_model(name, num_classes=4, channels=(8, 16, 32, 64))
    path = save_state_dict(narrow.state_dict(), tmp_path / 'narrow.safetensors')
    for kwargs in (dict(), dict(num_classes=6)):  # a new classifier too (fine-tuning from narrow weights)
        with pytest.raises(scnet.weights.fit.WeightsMismatchError) as info:
            scnet.create_model(name, checkpoint=str(path), **kwargs)
        assert str(info.value).startswith(f'{path} does not fit {name}: its stages are channels=(8, 16, 32, 64) wide, '
                                          'where this')
        assert info.value.fitting_options == {'channels': (8, 16, 32, 64)}
    loaded = scnet.create_model(name, checkpoint=str(path), channels=(8, 16, 32, 64))
    assert all(torch.equal(v, narrow.state_dict()[k]) for k, v in loaded.state_dict().items())
    # weights that no width fits (another network): no such hint
    other = save_state_dict(scnet.create_model('resnet26_cifar', num_classes=4).state_dict(),
                            tmp_path / 'o.safetensors')
    with pytest.raises(scnet.weights.fit.WeightsMismatchError) as info:
        scnet.create_model('scnet26_cifar', checkpoint=str(other))
    assert info.value.fitting_options is None and 'check that the model name' in str(info.value)
