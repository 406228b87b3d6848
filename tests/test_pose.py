"""`scnet pose`: the simple-baselines keypoint network over every zoo backbone, its geometry (crops, heatmaps,
decoding, flip test), and train / eval / predict end to end on synthetic COCO-format people."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import scnet
from scnet.cli.main import main
from scnet.models import list_models
from scnet.tasks.eval_report import EvalReport
from scnet.tasks.pose import load_pose_recipe
from scnet.tasks.pose.data import (Instance, KeypointSpec, PoseCropSet, apply, box_to_region, crop_matrix,
                                   crop_to_heatmap, decode_heatmaps, flip_average, heatmap_targets, heatmap_to_crop,
                                   warp)
from scnet.tasks.pose.evaluate import METRICS, coco_keypoint_metrics, oks_nms, predict_keypoints
from scnet.tasks.pose.model import build_pose_model
from scnet.tasks.synthetic_pose import COCO_KEYPOINTS, COCO_SKELETON, make_detections, make_people_coco
from scnet.train.distributed import Context

REPO = Path(__file__).resolve().parents[1]
SPEC = KeypointSpec(list(COCO_KEYPOINTS), [(a - 1, b - 1) for a, b in COCO_SKELETON])
CPU = Context(0, 1, 0, torch.device('cpu'))
TINY_BACKBONE = dict(channels=(16, 32, 64, 128), stem_width=16)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core machine run far faster on one thread than fighting over two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def data_args(paths, *, train=True):
    args = ['--val-ann', str(paths['val_ann']), '--val-images', str(paths['val_images'])]
    if train:
        args = ['--train-ann', str(paths['train_ann']), '--train-images', str(paths['train_images'])] + args
    return args


def read_metrics(run):
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]


def mean_pose_metrics(paths):
    """Chance: every ground-truth box of the validation set given the training set's mean pose (relative to
    its box), with full confidence."""
    from scnet.tasks.pose.splits import load_split

    train, _ = load_split(str(paths['train_ann']), str(paths['train_images']))
    val, spec = load_split(str(paths['val_ann']), str(paths['val_images']))
    total, count = np.zeros((17, 2)), np.zeros(17)
    for a in train.dataset['annotations']:
        k, (x, y, w, h) = np.array(a['keypoints']).reshape(17, 3), a['bbox']
        seen = k[:, 2] > 0
        total[seen] += (k[seen, :2] - [x, y]) / [w, h]
        count[seen] += 1
    mean = total / np.maximum(count, 1)[:, None]
    results = []
    for a in val.dataset['annotations']:
        if a['num_keypoints'] > 0:
            xy = mean * a['bbox'][2:] + a['bbox'][:2]
            results.append({'image_id': a['image_id'], 'category_id': 1, 'score': 1.0,
                            'keypoints': np.concatenate([xy, np.ones((17, 1))], 1).ravel().tolist()})
    return coco_keypoint_metrics(val, results, spec)


# --- the network -------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', list_models())
def test_every_zoo_backbone_builds_the_pose_network(name):
    with torch.device('meta'):
        model = build_pose_model(name, 17)
        heatmaps = model(torch.empty(2, 3, 256, 192))
    assert model.stride == 4 and heatmaps.shape == (2, 17, 64, 48)
    assert all(p.requires_grad for p in model.parameters())  # fine-tuned whole, as simple-baselines
    assert not any('Frozen' in type(m).__name__ for m in model.modules())
    deconvs = [m for m in model.deconv if isinstance(m, torch.nn.ConvTranspose2d)]
    expected = 1 if name.endswith('_cifar') else 3  # stride-8 CIFAR stems need one to reach stride 4
    assert len(deconvs) == expected and all(d.kernel_size == (4, 4) and d.out_channels == 256 for d in deconvs)
    assert model.final.kernel_size == (1, 1) and model.final.out_channels == 17


def test_head_init_and_a_real_forward():
    torch.manual_seed(0)
    model = build_pose_model('scnet26', 17, backbone_kwargs=TINY_BACKBONE, deconv_channels=32).eval()
    assert float(model.final.weight.detach().std()) == pytest.approx(0.001, rel=0.2)
    assert float(model.deconv[0].weight.detach().std()) == pytest.approx(0.001, rel=0.2)
    assert model(torch.randn(1, 3, 128, 96)).shape == (1, 17, 32, 24)


# --- geometry ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('rotation,flip', [(0.0, False), (25.0, False), (0.0, True), (-40.0, True)])
def test_warped_crop_puts_each_point_where_the_matrix_says(rotation, flip):
    image = np.zeros((200, 300, 3), np.uint8)
    point = np.array([123.0, 77.0])
    image[77, 123] = 255
    centre, size = box_to_region([100, 50, 60, 80], 192 / 256)
    matrix = crop_matrix(centre, size, (256, 192), rotation, flip)
    crop = np.asarray(warp(Image.fromarray(image), matrix, (256, 192)))[..., 0].astype(float)
    ys, xs = np.nonzero(crop)
    found = np.array([(xs * crop[ys, xs]).sum(), (ys * crop[ys, xs]).sum()]) / crop[ys, xs].sum()
    np.testing.assert_allclose(found, apply(matrix, point), atol=0.05)


def test_heatmap_target_decodes_back_to_its_point():
    """A keypoint -> crop -> Gaussian target -> argmax + quarter offset -> image: within 0.5 heatmap pixel."""
    rng = np.random.default_rng(0)
    centre, size = box_to_region([40, 30, 120, 200], 0.75)
    matrix = crop_matrix(centre, size, (256, 192))
    image_px_per_heatmap_px = 4 * size[0] / 192
    points = np.column_stack([rng.uniform(45, 155, 50), rng.uniform(35, 225, 50)])
    heat = crop_to_heatmap(apply(matrix, points), 4)
    targets, weights = heatmap_targets(heat, np.ones(50, bool), (64, 48), sigma=2.0)
    assert weights.tolist() == [1.0] * 50 and targets.max() <= 1.0
    positions, scores = decode_heatmaps(torch.from_numpy(targets)[None])
    assert float(scores.min()) > 0.9
    assert np.abs(positions[0].numpy() - heat).max() <= 0.5
    back = apply(np.linalg.inv(matrix), heatmap_to_crop(positions[0].double().numpy(), 4))
    assert np.abs(back - points).max() <= 0.5 * image_px_per_heatmap_px


def test_targets_of_unlabelled_or_far_away_keypoints_weigh_nothing():
    targets, weights = heatmap_targets(np.array([[10.0, 10.0], [5.0, 5.0], [-20.0, 3.0], [52.0, 30.0]]),
                                       np.array([True, False, True, True]), (64, 48), 2.0)
    assert weights.tolist() == [1.0, 0.0, 0.0, 1.0]  # the last is just outside: its Gaussian's tail is inside
    assert targets[1].max() == 0 and targets[2].max() == 0 and 0 < targets[3].max() < 0.5


def test_left_and_right_are_found_in_the_usual_naming_styles():
    """COCO's left_x/right_x, OpenPose's LShoulder/RShoulder, l_x/r_x, camel case; 'upright' names no side.
    A side without its mirror is warned about: a flip would leave it in place."""
    from scnet.tasks.pose.data import mirror_name

    names = ['nose', 'l_eye', 'r_eye', 'LShoulder', 'RShoulder', 'leftHand', 'rightHand', 'LEFT_KNEE', 'RIGHT_KNEE',
             'upright_tip', 'Left Ear', 'Right Ear']
    perm = KeypointSpec(names).flip_permutation
    assert [names[i] for i in perm] == ['nose', 'r_eye', 'l_eye', 'RShoulder', 'LShoulder', 'rightHand', 'leftHand',
                                        'RIGHT_KNEE', 'LEFT_KNEE', 'upright_tip', 'Right Ear', 'Left Ear']
    assert mirror_name('upright_tip') is None and mirror_name('nose') is None and mirror_name('L1') == 'R1'
    assert KeypointSpec(names).unpaired_sides() == []

    class Coco:
        dataset = {'categories': [{'id': 1, 'name': 'person', 'keypoints': ['nose', 'l_eye', 'left_ear'],
                                   'skeleton': []}]}

    with pytest.warns(UserWarning, match="l_eye, left_ear name a side but their mirror is not among the keypoints"):
        KeypointSpec.from_coco(Coco(), 'a.json')


def test_flip_test_of_a_symmetric_input_is_symmetric(tmp_path):
    """A mirror-symmetric image: flip-averaged heatmaps equal their own mirror image with left and right
    swapped (no one-pixel shift on this grid), and each left keypoint mirrors its right one in the image."""
    torch.manual_seed(0)
    model = build_pose_model('scnet26', 17, backbone_kwargs=TINY_BACKBONE, deconv_channels=32)
    with torch.no_grad():  # give BN some statistics so the random network's maps are not flat
        model.train()(torch.randn(4, 3, 128, 96))
    model.eval()
    perm = SPEC.flip_permutation
    assert [COCO_KEYPOINTS[i] for i in perm[:7]] == ['nose', 'right_eye', 'left_eye', 'right_ear', 'left_ear',
                                                      'right_shoulder', 'left_shoulder']
    half = np.random.default_rng(1).integers(0, 255, (160, 60, 3), dtype=np.uint8)
    image = np.concatenate([half, half[:, ::-1]], axis=1)   # 120 wide, mirror axis at x = 59.5
    x = torch.randn(2, 3, 128, 96)
    x = (x + x.flip(-1)) / 2
    with torch.no_grad():
        avg = flip_average(model(x), model(x.flip(-1)), perm)
    torch.testing.assert_close(avg.flip(-1)[:, perm], avg, rtol=0, atol=1e-6)
    path = tmp_path / 'symmetric.png'
    Image.fromarray(image).save(path)
    centre, size = box_to_region([10, 20, 100, 120], 0.75)   # centred on the mirror axis
    crops = PoseCropSet([Instance(1, str(path), centre, size)], (128, 96))
    kps = predict_keypoints(model, crops, SPEC, CPU, flip_test=True, progress=False)[0]['keypoints']
    pairs = [(i, p) for i, p in enumerate(perm) if i < p]
    for left, right in pairs:
        assert kps[left, 0] + kps[right, 0] == pytest.approx(2 * 59.5, abs=1e-6)
        assert kps[left, 1] == pytest.approx(kps[right, 1], abs=1e-6)


def test_oks_nms_keeps_people_and_drops_duplicates():
    a = np.column_stack([np.linspace(10, 60, 17), np.linspace(10, 90, 17), np.ones(17)])
    people = [{'keypoints': a, 'score': 0.9, 'area': 4000.0},
              {'keypoints': a + [0.5, 0.5, 0], 'score': 0.8, 'area': 4000.0},    # a duplicate
              {'keypoints': a + [80, 0, 0], 'score': 0.7, 'area': 4000.0}]      # someone else
    assert oks_nms(people, SPEC.sigmas, 0.9) == [0, 2]


# --- the synthetic data set ------------------------------------------------------------------------------------


def test_synthetic_people_follow_coco_rules_and_the_seed(tmp_path):
    a = make_people_coco(tmp_path / 'a', num_train=12, num_val=3, image_size=128, seed=5)
    b = make_people_coco(tmp_path / 'b', num_train=12, num_val=3, image_size=128, seed=5)
    assert a['train_ann'].read_text() == b['train_ann'].read_text()
    assert (a['train_images'] / '000003.jpg').read_bytes() == (b['train_images'] / '000003.jpg').read_bytes()
    data = json.loads(a['train_ann'].read_text())
    assert data['categories'][0]['keypoints'] == list(COCO_KEYPOINTS)
    assert data['categories'][0]['skeleton'] == [list(p) for p in COCO_SKELETON]
    per_image = np.bincount([ann['image_id'] for ann in data['annotations']])[1:]
    assert len(data['images']) == 12 and per_image.min() >= 1 and per_image.max() <= 3
    all_v = []
    for ann in data['annotations']:
        k = np.array(ann['keypoints']).reshape(17, 3)
        x, y, w, h = ann['bbox']
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        assert ann['num_keypoints'] == int((k[:, 2] > 0).sum()) and 0 < ann['area'] <= w * h
        assert (k[k[:, 2] == 0, :2] == 0).all()          # unlabelled: x = y = 0
        assert ((k[k[:, 2] > 0, :2] >= 0) & (k[k[:, 2] > 0, :2] < 128)).all()
        all_v += k[:, 2].tolist()
    assert {0, 1, 2} <= set(all_v)                       # some unlabelled, some hidden, most visible
    dets = json.loads(make_detections(a['val_ann'], tmp_path / 'dets.json').read_text())
    assert {d['category_id'] for d in dets} == {1, 2} and all(0 < d['score'] <= 1 for d in dets)


# --- train, eval, predict end to end ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def people(tmp_path_factory):
    root = tmp_path_factory.mktemp('people')
    paths = make_people_coco(root, num_train=100, num_val=30, image_size=192, seed=1)
    paths['boxes'] = make_detections(paths['val_ann'], root / 'detections_val.json', seed=1)
    return paths


@pytest.fixture(scope='module')
def trained(people, tmp_path_factory):
    """The shipped 'people' recipe, 8 epochs (about half a minute on 2 busy cores)."""
    run = tmp_path_factory.mktemp('runs') / 'people'
    assert main(['pose', 'train', '--config', 'people', *data_args(people), '--epochs', '8', '--eval-every', '4',
                 '--output', str(run), '--quiet']) == 0
    return run


def test_training_lowers_the_loss_and_logs_every_metric(trained, people):
    rows = read_metrics(trained)
    assert [r['epoch'] for r in rows] == list(range(1, 9))
    losses = [r['train_loss'] for r in rows]
    assert losses[-1] < 0.6 * losses[0] and all(b < a for a, b in zip(losses, losses[1:]))
    assert [r['lr'] for r in rows] == [2e-3] * 6 + [2e-4] * 2   # step at 8 of 10 epochs -> 6 of 8
    for row in (rows[3], rows[7]):
        assert all(isinstance(row[m], float) for m in ('kpt_AP', 'kpt_AP50', 'kpt_AP75', 'kpt_APm', 'kpt_AR'))
    assert 'kpt_AP' not in rows[0] and rows[-1]['train_crops'] > 150
    assert rows[-1]['kpt_AP'] > rows[3]['kpt_AP']
    with safe_open(str(trained / 'model.safetensors'), 'pt') as f:
        meta = f.metadata()
    assert meta['task'] == 'pose' and meta['backbone'] == 'scnet26'
    assert json.loads(meta['keypoints'])['names'] == list(COCO_KEYPOINTS)
    assert json.loads(meta['image_size']) == [128, 96] and json.loads(meta['heatmap_size']) == [32, 24]
    results = json.loads((trained / 'keypoints_val.json').read_text())
    assert results and len(results[0]['keypoints']) == 51
    assert any((trained / 'tensorboard').iterdir())


def test_eval_json_has_every_metric_and_ap_clearly_above_chance(trained, people, capsys, tmp_path):
    out = tmp_path / 'eval.json'
    assert main(['pose', 'eval', '--checkpoint', str(trained / 'model.safetensors'), *data_args(people, train=False),
                 '--format', 'json', '--workers', '0', '--quiet', '--output', str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert (report['task'], report['settings']['boxes'], report['images']) == ('pose', 'ground truth', 30)
    assert set(report) == {f.name for f in dataclasses.fields(EvalReport)}   # the shape of `scnet detect eval`'s
    result = report['metrics']
    assert set(result) == set(METRICS) and all(isinstance(result[m], float) for m in METRICS)
    assert result['kpt_AP'] == pytest.approx(read_metrics(trained)[-1]['kpt_AP'])
    chance = mean_pose_metrics(people)
    print(f"\nsynthetic people, 8 epochs: AP {result['kpt_AP']:.2f} AP50 {result['kpt_AP50']:.2f} "
          f"(mean pose in the true boxes: AP {chance['kpt_AP']:.2f} AP50 {chance['kpt_AP50']:.2f})", file=sys.stderr)
    assert chance['kpt_AP'] < 1.0
    assert result['kpt_AP'] > 5.0 and result['kpt_AP50'] > 30.0
    assert result['kpt_AP'] > 20 * chance['kpt_AP']
    # the training state reads too, and the table format
    assert main(['pose', 'eval', '--checkpoint', str(trained / 'last.pt'), *data_args(people, train=False),
                 '--workers', '0', '--quiet', '--no-flip-test']) == 0
    table = capsys.readouterr().out
    assert 'AP50' in table and 'APm' in table and 'scnet26' in table


def test_eval_with_detected_boxes(trained, people, capsys, tmp_path):
    results = tmp_path / 'results.json'
    assert main(['pose', 'eval', '--checkpoint', str(trained), *data_args(people, train=False), '--boxes',
                 str(people['boxes']), '--format', 'json', '--workers', '0', '--quiet', '--results',
                 str(results)]) == 0
    report = json.loads(capsys.readouterr().out)
    n_gt = sum(1 for a in json.loads(people['val_ann'].read_text())['annotations'] if a['num_keypoints'])
    n_dets = sum(1 for d in json.loads(people['boxes'].read_text()) if d['category_id'] == 1)
    assert report['settings']['boxes'] == str(people['boxes']) and report['counts']['crops'] == n_dets > n_gt
    assert report['metrics']['kpt_AP'] > 3.0 and report['metrics']['kpt_AP50'] > 20.0
    assert all(r['category_id'] == 1 for r in json.loads(results.read_text()))
    assert main(['pose', 'eval', '--checkpoint', str(trained), *data_args(people, train=False), '--boxes',
                 str(people['boxes']), '--box-score-thresh', '0.5', '--format', 'json', '--workers', '0',
                 '--quiet']) == 0
    assert json.loads(capsys.readouterr().out)['counts']['crops'] == n_gt   # the false alarms score below 0.3


def test_predict_draws_pngs(trained, people, tmp_path, capsys):
    images = [people['val_images'] / '000001.jpg', people['val_images'] / '000002.jpg']
    anns = json.loads(people['val_ann'].read_text())['annotations']
    boxes = tmp_path / 'boxes.json'
    boxes.write_text(json.dumps({'000001.jpg': [a['bbox'] for a in anns if a['image_id'] == 1]}))
    out = tmp_path / 'drawn'
    assert main(['pose', 'predict', '--checkpoint', str(trained / 'model.safetensors'), '--images',
                 *map(str, images), '--boxes', str(boxes), '--output', str(out)]) == 0
    assert '2 image(s) drawn' in capsys.readouterr().out
    for image in images:
        drawn = Image.open(out / f'{image.stem}.png')
        assert drawn.format == 'PNG' and drawn.size == Image.open(image).size
    assert np.abs(np.asarray(Image.open(out / '000001.png'), dtype=int) -
                  np.asarray(Image.open(images[0]), dtype=int)).max() > 100   # something was drawn
    record = json.loads((out / 'keypoints.json').read_text())
    assert len(record[0]['people']) == sum(a['image_id'] == 1 for a in anns) and record[1]['people'] == []
    assert set(record[0]['people'][0]['keypoints']) == set(COCO_KEYPOINTS)
    # the predictions.json of `scnet detect predict`: its person detections (another category is left out)
    person = [{'category': 'person', 'score': 0.9, 'bbox': a['bbox']} for a in anns if a['image_id'] == 1]
    detected = tmp_path / 'predictions.json'
    detected.write_text(json.dumps([
        {'image': str(images[0]), 'output': 'x.png', 'width': 1, 'height': 1,
         'detections': person + [{'category': 'dog', 'score': 0.99, 'bbox': [1, 1, 5, 5]}]},
        {'image': str(images[1]), 'output': 'y.png', 'width': 1, 'height': 1, 'detections': []}]))
    assert main(['pose', 'predict', '--checkpoint', str(trained), '--images', *map(str, images), '--boxes',
                 str(detected), '--output', str(tmp_path / 'from_detector')]) == 0
    chained = json.loads((tmp_path / 'from_detector' / 'keypoints.json').read_text())
    assert len(chained[0]['people']) == len(person) and chained[1]['people'] == []
    assert [p['score'] for p in chained[0]['people']] == [0.9] * len(person)
    # no boxes: each whole image is one person; a folder of images works too
    assert main(['pose', 'predict', '--checkpoint', str(trained), '--images', str(people['val_images']),
                 '--output', str(tmp_path / 'all')]) == 0
    record = json.loads((tmp_path / 'all' / 'keypoints.json').read_text())
    assert len(record) == 30 and all(len(r['people']) == 1 for r in record)


# --- runs: resume, no overwrite, many processes --------------------------------------------------------------


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    return make_people_coco(tmp_path_factory.mktemp('small'), num_train=10, num_val=3, image_size=96, seed=2)


def small_train(small, run, *extra):
    return ['pose', 'train', '--config', 'people', *data_args(small), '--output', str(run), '--quiet',
            '--epochs', '2', '--seed', '3', *extra]


def test_resume_refuses_a_config_that_changes_the_runs_settings(tmp_path, capsys):
    """On --resume the run's config.json is the base, as for scnet train and scnet detect train."""
    from scnet.tasks.pose import load_pose_recipe

    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.json').write_text(json.dumps(load_pose_recipe('people', epochs=3).to_dict()))
    assert main(['pose', 'train', '--output', str(run), '--resume', '--config', 'people', '--quiet']) == 2
    err = capsys.readouterr().err
    assert '--config people sets epochs 10 (the run: 3)' in err and "on --resume the run's own settings" in err
    assert sorted(p.name for p in run.iterdir()) == ['config.json']


def test_a_backbone_checkpoint_of_other_widths_replaces_the_recipes_and_the_run_resumes_as_started(
        small, tmp_path, capsys):
    """people's quarter widths belong to the scnet26 it trains from scratch: a classification checkpoint's own
    options build the backbone (with a note, and one that the recipe's pretrained is not used), the checkpoint
    of the run records them, and the same command with --resume goes on."""
    from scnet.tasks.pose import load_pose_checkpoint
    from scnet.weights import save_state_dict

    classifier = scnet.create_model('scnet26', num_classes=3, channels=(8, 16, 32, 64))
    path = save_state_dict(classifier.state_dict(), tmp_path / 'cls.safetensors',
                           metadata={'model': 'scnet26', 'model_kwargs': json.dumps({'channels': [8, 16, 32, 64]})})
    run = tmp_path / 'run'
    argv = small_train(small, run, '--backbone-checkpoint', str(path), '--pretrained')
    assert main([*argv, '--epochs', '1']) == 0
    err = capsys.readouterr().err
    assert f"note: the backbone's weights come from {path}; pretrained: true (the published weights) is not used" in err
    assert f"note: scnet26 is built as {path} records it, {{'channels': [8, 16, 32, 64], 'stem_width': 16}}, not " \
        "with the recipe's {'channels': [16, 32, 64, 128]}" in err
    config = json.loads((run / 'config.json').read_text())
    assert config['backbone_kwargs'] == {'channels': [16, 32, 64, 128], 'stem_width': 16}
    assert config['resolved_backbone_kwargs'] == {'channels': [8, 16, 32, 64], 'stem_width': 16}
    model = load_pose_checkpoint(run / 'model.safetensors').model
    assert model.backbone.layer1[0].conv3.weight.shape[0] == 32  # 8 x 4: the checkpoint's widths
    assert main([*argv, '--resume']) == 0, capsys.readouterr().err
    assert [row['epoch'] for row in read_metrics(run)] == [1, 2]
    assert main([*argv, '--resume', '--epochs', '1']) == 2  # fewer epochs than it has trained
    assert 'the run has trained 2 epochs already; --epochs 1 would end it' in capsys.readouterr().err
    assert json.loads((run / 'config.json').read_text())['epochs'] == 2
    (run / 'config.json').unlink()  # only last.pt copied to another machine: its settings are restored from it
    assert main(['pose', 'train', *data_args(small), '--output', str(run), '--quiet', '--resume', '--epochs', '3']) == 0
    assert f'{run / "config.json"} was missing: restored from the settings' in capsys.readouterr().err
    assert [row['epoch'] for row in read_metrics(run)] == [1, 2, 3]
    (run / 'config.json').write_text('[]')  # damaged since: the file is named, with the way out
    assert main(['pose', 'train', *data_args(small), '--output', str(run), '--quiet', '--resume', '--epochs', '4']) == 2
    assert "config.json holds a JSON list, not the run's settings; delete it (--resume then restores it" in \
        capsys.readouterr().err
    # a classification checkpoint of another network names the --backbone it holds
    assert main([*small_train(small, tmp_path / 'other', '--backbone-checkpoint', str(path), '--backbone',
                              'resnet26')]) == 2
    assert capsys.readouterr().err.strip().endswith('holds weights of scnet26 (recorded in it), not of resnet26: '
                                                    'pass --backbone scnet26 or another checkpoint')


def test_sigterm_after_an_epoch_was_evaluated_stops_once_it_is_saved(small, tmp_path, monkeypatch, capsys):
    """A SIGTERM while an epoch is evaluated: the epoch is saved, then the run stops, saying so (it used to die
    silently and lose the epoch); the resume goes on with the next."""
    import signal

    import scnet.tasks.pose.run as pose_run

    evaluate, calls = pose_run.evaluate_pose, []

    def signal_then_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(pose_run, 'evaluate_pose', signal_then_evaluate)
    run = tmp_path / 'run'
    assert main(small_train(small, run, '--eval-every', '1')) == 143
    err = capsys.readouterr().err.strip()
    assert err.endswith(f'scnet pose: stopped by SIGTERM after epoch 1, saved in {run / "last.pt"}: continue with '
                        f'scnet pose train --output {run} --resume')
    assert [row['epoch'] for row in read_metrics(run)] == [1]
    monkeypatch.undo()
    assert main(small_train(small, run, '--resume')) == 0
    assert [row['epoch'] for row in read_metrics(run)] == [1, 2]


def test_interrupted_run_resumes_to_the_same_weights(small, tmp_path, monkeypatch, capsys):
    from scnet.train.run_folder import RunFolder

    full, cut = tmp_path / 'full', tmp_path / 'cut'
    assert main(small_train(small, full)) == 0
    assert main(small_train(small, full)) == 2
    assert 'already holds a run: pass --resume' in capsys.readouterr().err
    original = RunFolder.end_epoch

    def end_epoch_then_die(self, row, state):
        original(self, row, state)
        raise KeyboardInterrupt   # killed right after epoch 1 was saved

    monkeypatch.setattr(RunFolder, 'end_epoch', end_epoch_then_die)
    assert main(small_train(small, cut)) == 130
    monkeypatch.setattr(RunFolder, 'end_epoch', original)
    assert torch.load(cut / 'last.pt', weights_only=True)['epoch'] == 1 and not (cut / 'model.safetensors').exists()
    restarted = tmp_path / 'restarted'
    shutil.copytree(cut, restarted)
    assert main(['pose', 'train', '--output', str(cut), '--resume', '--quiet']) == 0
    # a worker torchrun restarted runs the first command line again, without --resume, and continues too
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    assert main(small_train(small, restarted)) == 0
    monkeypatch.delenv('TORCHELASTIC_RESTART_COUNT')
    a = load_file(full / 'model.safetensors')
    for b in (load_file(cut / 'model.safetensors'), load_file(restarted / 'model.safetensors')):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r['train_loss'] for r in read_metrics(cut)] == [r['train_loss'] for r in read_metrics(full)]
    assert main(['pose', 'train', '--output', str(tmp_path / 'none'), '--resume']) == 2
    assert 'nothing to resume' in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small, tmp_path, monkeypatch, capsys):
    import scnet.tasks.pose.engine as pose_run

    real, calls = pose_run.heatmap_loss, {'n': 0}
    people = sum(1 for a in json.loads(small['train_ann'].read_text())['annotations'] if a['num_keypoints'])
    steps = people // 4   # batches of 4, the last partial one dropped

    def exploding(*args):   # NaN from the first step of epoch 2
        calls['n'] += 1
        return real(*args) * (float('nan') if calls['n'] > steps else 1.0)

    monkeypatch.setattr(pose_run, 'heatmap_loss', exploding)
    run = tmp_path / 'run'
    assert main(small_train(small, run)) == 2
    err = capsys.readouterr().err
    assert 'non-finite at epoch 2' in err and 'last good checkpoint' in err and '(epoch 1)' in err
    assert torch.load(run / 'last.pt', weights_only=True)['epoch'] == 1


@pytest.mark.slow
def test_two_processes_evaluate_every_crop_once(small, tmp_path, capsys):
    run = tmp_path / 'ddp'
    env = dict(os.environ, OMP_NUM_THREADS='1', TMPDIR=str(tmp_path))  # (torchrun's torchelastic_* logs)
    out = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port',
                          '29561', '-m', 'scnet', *small_train(small, run, '--epochs', '1', '--batch-size', '4')],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    n_val = sum(1 for a in json.loads(small['val_ann'].read_text())['annotations'] if a['num_keypoints'])
    row = read_metrics(run)[0]
    assert row['val_crops'] == n_val and 'kpt_AP' in row
    assert json.loads((run / 'config.json').read_text())['world_size'] == 2
    assert out.stdout.count('done:') == 1
    # the same metrics as one process evaluating the final weights alone
    results = tmp_path / 'alone.json'
    assert main(['pose', 'eval', '--checkpoint', str(run), *data_args(small, train=False), '--format', 'json',
                 '--workers', '0', '--quiet', '--results', str(results)]) == 0
    alone = json.loads(capsys.readouterr().out)['metrics']
    assert all(alone[m] == row[m] for m in METRICS)

    def people(path):
        return sorted(json.dumps(r, sort_keys=True) for r in json.loads(path.read_text()))
    assert people(results) == people(run / 'keypoints_val.json')


# --- recipes ---------------------------------------------------------------------------------------------------


def test_shipped_pose_recipes_follow_simple_baselines():
    r = load_pose_recipe('simple_baselines_256x192')
    assert (r.optimizer, r.lr, r.epochs, r.lr_steps, r.lr_gamma, r.batch_size) == \
        ('adam', 1e-3, 140, [90, 120], 0.1, 128)
    assert (r.image_size, r.sigma, r.flip, r.flip_test, r.deconv_channels, r.deconv_kernel) == \
        ([256, 192], 2.0, True, True, 256, 4)
    assert r.pretrained and not r.frozen_bn and r.trainable_layers == 5 and r.half_body_prob == 0.3
    big = load_pose_recipe('simple_baselines_384x288')
    assert big.image_size == [384, 288] and big.sigma == 3.0 and big.lr_steps == [90, 120]
    assert load_pose_recipe('simple_baselines_256x192', epochs=14).milestones == [9, 12]
    assert load_pose_recipe(None, epochs=20).milestones == [13, 17]
    assert load_pose_recipe('people').image_size == [128, 96]
    assert load_pose_recipe('people', image_size='256x192').image_size == [256, 192]


@pytest.mark.parametrize('action', ['train', 'eval', 'predict', 'synth'])
def test_every_pose_action_has_help(action, capsys):
    with pytest.raises(SystemExit) as e:
        main(['pose', action, '--help'])
    assert e.value.code == 0 and f'usage: scnet pose {action}' in capsys.readouterr().out


# --- bad input: one line naming the problem, exit 2, before any work ---------------------------------------------


def _broken_copy(small, tmp_path, edit):
    data = json.loads(small['train_ann'].read_text())
    edit(data)
    path = tmp_path / 'broken.json'
    path.write_text(json.dumps(data))
    return dict(small, train_ann=path)


def _set_first(key, value):
    def edit(data):
        data['annotations'][0][key] = value
    return edit


def _set_first_value(index, value):
    def edit(data):
        data['annotations'][0]['keypoints'][index] = value
    return edit


def _nose_at(x, y):
    def edit(data):
        data['annotations'][0]['keypoints'][:3] = [x, y, 2]
    return edit


@pytest.mark.parametrize('edit,message', [
    (_set_first('keypoints', [10, 10, 2] * 16), 'keypoint arrays of the wrong length: annotation 1: 48 values, '
                                                'expected 51'),
    (_set_first_value(3, 'ten'), "keypoint arrays with values that are not numbers: annotation 1: 'ten' at position 3 "
                                 '(x of left_eye)'),
    (_set_first_value(2, 7), 'keypoints with a visibility other than 0 (not labelled), 1 (hidden), 2 (visible): '
                             'annotation 1: nose has v=7'),
    (_nose_at(500, 10), 'labelled keypoints outside their image: annotation 1 in 000001.jpg (96x96): nose at '
                        '(500, 10)'),
    (_nose_at(20, -8.5), 'labelled keypoints outside their image: annotation 1 in 000001.jpg (96x96): nose at '
                         '(20, -8.5)'),
    (lambda d: d['images'][1].update(id=1), 'duplicate image ids (give each image its own): id 1: 000001.jpg and '
                                            '000002.jpg'),
    (lambda d: d['annotations'][1].update(id=1), 'duplicate annotation ids (give each annotation its own): id 1'),
    (_set_first('category_id', 3), 'annotations of categories the file does not list (it lists 1): annotation 1 -> '
                                   'category_id 3'),
    (_set_first('image_id', 99), 'annotations of images the file does not list: annotation 1 -> image_id 99'),
    (_set_first('bbox', [10, 10, 0, 40]), 'boxes with zero or negative area'),
    (_set_first('bbox', [50, 50, 200, 40]), 'boxes outside their image'),
    (lambda d: d['images'][0].update(file_name='nowhere.jpg'), 'images listed but missing'),
    (lambda d: d['categories'][0].pop('keypoints'), 'keypoint definitions missing'),
])
def test_bad_annotations_stop_with_one_line(small, tmp_path, capsys, edit, message):
    paths = _broken_copy(small, tmp_path, edit)   # (a short recipe: a problem let through costs seconds, not hours)
    assert main(['pose', 'train', '--config', 'people', '--epochs', '1', *data_args(paths), '--output',
                 str(tmp_path / 'run'), '--quiet']) == 2
    err = capsys.readouterr().err
    assert message in err and str(paths['train_ann']) in err and err.count('\n') == 1
    assert not (tmp_path / 'run' / 'last.pt').exists()


def test_unreadable_image_stops_the_run_naming_it(small, tmp_path, capsys):
    import shutil

    images = tmp_path / 'train'
    shutil.copytree(small['train_images'], images)
    bad = images / '000004.jpg'
    bad.write_bytes(bad.read_bytes()[:300])
    assert main(['pose', 'train', '--config', 'people', *data_args(dict(small, train_images=images)), '--output',
                 str(tmp_path / 'run'), '--quiet', '--epochs', '1']) == 2
    err = capsys.readouterr().err  # found by opening every image before anything is built
    assert str(bad) in err and 'files that are not readable images' in err and err.count('\n') == 1
    assert not (tmp_path / 'run').exists()


def test_files_that_are_not_coco_json(small, tmp_path, capsys):
    text = tmp_path / 'notes.json'
    text.write_text('this is not json')
    assert main(['pose', 'train', *data_args(dict(small, train_ann=text)), '--output', str(tmp_path / 'a')]) == 2
    assert 'not JSON' in capsys.readouterr().err
    text.write_text('[1, 2, 3]')
    assert main(['pose', 'train', *data_args(dict(small, val_ann=text)), '--output', str(tmp_path / 'b')]) == 2
    assert 'not COCO JSON: the top level is a list' in capsys.readouterr().err
    assert main(['pose', 'eval', '--checkpoint', str(tmp_path / 'x.safetensors'), *data_args(small, train=False)]) == 2
    assert 'no such checkpoint file' in capsys.readouterr().err
    (tmp_path / 'no_run').mkdir()  # a folder that holds no run's files
    assert main(['pose', 'eval', '--checkpoint', str(tmp_path / 'no_run'), *data_args(small, train=False)]) == 2
    assert 'no_run is a folder with neither model.safetensors nor last.pt' in capsys.readouterr().err


def test_bad_detection_files_and_checkpoints(trained, small, people, tmp_path, capsys):
    dets = tmp_path / 'dets.json'
    dets.write_text(json.dumps([{'image_id': 1, 'category_id': 1, 'bbox': [5, 5, 0, 10], 'score': 0.9},
                                {'image_id': 999, 'category_id': 1, 'bbox': [5, 5, 10, 10], 'score': 0.9}]))
    assert main(['pose', 'eval', '--checkpoint', str(trained), *data_args(people, train=False), '--boxes',
                 str(dets)]) == 2
    err = capsys.readouterr().err
    assert 'boxes with zero or negative area' in err and 'images not in the annotation file' in err
    assert err.count('\n') == 1
    dets.write_text('{"not": "a list"}')
    assert main(['pose', 'eval', '--checkpoint', str(trained), *data_args(people, train=False), '--boxes',
                 str(dets)]) == 2
    assert 'not COCO detection results' in capsys.readouterr().err
    # a classification checkpoint is not a pose checkpoint
    from scnet.weights import save_state_dict
    other = save_state_dict({'w': torch.zeros(2)}, tmp_path / 'cls.safetensors', metadata={'model': 'scnet26'})
    assert main(['pose', 'eval', '--checkpoint', str(other), *data_args(people, train=False)]) == 2
    assert 'not a pose checkpoint' in capsys.readouterr().err


# --- predict: every input checked before anything is written ----------------------------------------------------


@pytest.fixture(scope='module')
def untrained(tmp_path_factory):
    """An untrained pose network on a CIFAR-stem backbone with COCO's keypoints, saved as a run saves one (its
    keypoints are random; what these tests check is what predict reads and writes)."""
    from scnet.tasks.pose import PoseMetadata, PoseRecipe
    from scnet.weights import save_state_dict

    recipe = PoseRecipe(backbone='resnet26_cifar', image_size=[32, 24], deconv_layers=1, deconv_channels=8)
    torch.manual_seed(0)
    model = build_pose_model('resnet26_cifar', len(COCO_KEYPOINTS), deconv_layers=1, deconv_channels=8)
    return save_state_dict(model.state_dict(), tmp_path_factory.mktemp('untrained') / 'model.safetensors',
                           metadata=PoseMetadata.of_run(recipe, SPEC, model, recipe.backbone_kwargs).to_metadata())


def predict_args(checkpoint, images, out, boxes=None):
    return ['pose', 'predict', '--checkpoint', str(checkpoint), '--images', *map(str, images), '--output', str(out),
            '--no-flip-test', '--device', 'cpu', *(['--boxes', str(boxes)] if boxes else [])]


def one_error_line(capsys, *expected):
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('scnet pose: error: '), err
    for text in expected:
        assert text in err, err


def test_predict_clips_boxes_and_refuses_boxes_wholly_outside(untrained, small, tmp_path, capsys):
    image = small['val_images'] / '000001.jpg'   # 96 x 96
    boxes = tmp_path / 'boxes.json'
    boxes.write_text(json.dumps({'000001.jpg': [[-20, -30, 60, 300, 0.9]]}))   # passes the border: clipped
    assert main(predict_args(untrained, [image], tmp_path / 'a', boxes)) == 0
    person = json.loads((tmp_path / 'a' / 'keypoints.json').read_text())[0]['people']
    assert len(person) == 1 and person[0]['score'] == 0.9
    boxes.write_text(json.dumps([{'file_name': '000001.jpg', 'bbox': [10, 10, 30, 30]},
                                 {'file_name': '000001.jpg', 'bbox': [200, 150, 40, 80]}]))
    assert main(predict_args(untrained, [image], tmp_path / 'b', boxes)) == 2
    one_error_line(capsys, f'{boxes}: 1 box(es) [x, y, w, h] wholly outside their image: 000001.jpg (96x96): '
                           '[200.0, 150.0, 40.0, 80.0]')
    assert not (tmp_path / 'b').exists()


def test_predict_refuses_a_box_file_keyed_by_other_names(untrained, small, tmp_path, capsys):
    """Names matching none of the images, while an image has no boxes: a file keyed by other names (paths,
    other extensions) would otherwise draw no one, silently."""
    images = [small['val_images'] / '000001.jpg', small['val_images'] / '000002.jpg']
    boxes = tmp_path / 'boxes.json'
    boxes.write_text(json.dumps({'val/000001.png': [[10, 10, 30, 30]], 'val/000002.png': [[5, 5, 20, 20]]}))
    assert main(predict_args(untrained, images, tmp_path / 'a', boxes)) == 2
    one_error_line(capsys, '2 name(s) match none of the images: val/000001.png, val/000002.png',
                   '2 image(s) have no boxes: 000001.jpg, 000002.jpg', "Key the boxes by file name (e.g. '000001.jpg')")
    assert not (tmp_path / 'a').exists()
    # a box file of a whole set, drawn for some of its images: every image given has its entry
    boxes.write_text(json.dumps({'000001.jpg': [[10, 10, 30, 30]], '000002.jpg': [], '000003.jpg': [[1, 1, 9, 9]]}))
    assert main(predict_args(untrained, images, tmp_path / 'b', boxes)) == 0
    assert [len(r['people']) for r in json.loads((tmp_path / 'b' / 'keypoints.json').read_text())] == [1, 0]


def test_predict_reads_every_image_before_writing_anything(untrained, small, tmp_path, capsys):
    folder = tmp_path / 'images'
    shutil.copytree(small['val_images'], folder)
    bad = folder / 'zz.jpg'   # sorted last, after the good ones
    bad.write_bytes((folder / '000001.jpg').read_bytes()[:400])
    boxes = tmp_path / 'boxes.json'   # no boxes for the damaged image: it is not cropped, only drawn at the end
    boxes.write_text(json.dumps({'000001.jpg': [[10, 10, 30, 30]], '000002.jpg': [], '000003.jpg': [],
                                 'zz.jpg': []}))
    assert main(predict_args(untrained, [folder], tmp_path / 'out', boxes)) == 2
    one_error_line(capsys, f'1 of the 4 images cannot be decoded: {bad}', 'nothing was written')
    assert not (tmp_path / 'out').exists()


def test_predict_never_replaces_an_input_image(untrained, small, tmp_path, capsys):
    folder = tmp_path / 'images'
    folder.mkdir()
    first = sorted(Path(small['val_images']).iterdir())[0]
    Image.open(first).save(folder / 'person.png')
    before = (folder / 'person.png').read_bytes()
    assert main(predict_args(untrained, [folder / 'person.png'], folder, None)) == 2
    one_error_line(capsys, 'the drawing person.png would replace the input image', 'another --output folder')
    assert (folder / 'person.png').read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ['person.png']


def test_damaged_pose_checkpoint_is_called_damaged(untrained, small, tmp_path, capsys):
    damaged = tmp_path / 'model.safetensors'
    damaged.write_bytes(untrained.read_bytes()[:500])
    assert main(['pose', 'eval', '--checkpoint', str(tmp_path), *data_args(small, train=False)]) == 2
    one_error_line(capsys, f'{damaged}: not a readable safetensors file, damaged or truncated')


# --- small settings, offline weights ----------------------------------------------------------------------------


def test_too_small_image_sizes_suggest_a_size_that_works(small, tmp_path, capsys):
    assert main(small_train(small, tmp_path / 'run', '--image-size', '8')) == 2
    one_error_line(capsys, "image size 8x6: height and width must be multiples of 32, the stride of scnet26's last "
                           'stage (e.g. 32x32)')
    assert main(['pose', 'synth', '--output', str(tmp_path / 'synth'), '--image-size', '8']) == 2
    one_error_line(capsys, '--image-size 8 is too small for the figures: pass 32 or more')
    assert not (tmp_path / 'synth').exists()


def test_pretrained_backbone_out_of_reach_fails_in_seconds_naming_the_flag(small, tmp_path, capsys, monkeypatch):
    """A baseline's weights come from the Hugging Face Hub, whose client retries for about a minute before a
    message that names no flag. Here the Hub is a closed local port and its cache an empty folder."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    for variable in ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(variable, raising=False)
    start = time.perf_counter()
    assert main(small_train(small, tmp_path / 'run', '--backbone', 'resnet26', '--pretrained')) == 2
    assert time.perf_counter() - start < 60
    one_error_line(capsys, 'resnet26: its ImageNet weights are not cached here and cannot be downloaded from '
                           'http://127.0.0.1:9/timm/resnet26', 'pass a local copy with --backbone-checkpoint PATH')


def test_classifier_tools_name_the_pose_command_for_a_pose_checkpoint(untrained, tmp_path, capsys):
    said = (f'{untrained} is a pose checkpoint (backbone resnet26_cifar), not a classifier: '
            f'`scnet pose predict --checkpoint {untrained}')
    image = tmp_path / 'photo.png'
    Image.new('RGB', (40, 30), 'gray').save(image)
    assert main(['cam', '--models', f'resnet26_cifar:{untrained}', '--images', str(image),
                 '--output', str(tmp_path / 'cam')]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert main(['features', '--model', str(untrained), '--image', str(image), '--output', str(tmp_path / 'maps')]) == 2
    assert said in capsys.readouterr().err
    with pytest.raises(scnet.CheckpointError, match='is a pose checkpoint'):
        scnet.create_model('resnet26_cifar', checkpoint=str(untrained))
    assert [p.name for p in tmp_path.iterdir()] == ['photo.png']  # nothing written


def test_images_of_another_size_or_not_images_stop_before_anything_runs(untrained, small, tmp_path, capsys):
    """As for detection: every image listed is opened first (the docs promise the same checks), so a file of
    another size than its annotation says is not evaluated silently with its keypoints misplaced."""
    images = tmp_path / 'val'
    shutil.copytree(small['val_images'], images)
    first = sorted(images.iterdir())[0]
    with Image.open(first) as im:
        im.resize((im.width // 2, im.height // 2)).save(first)
    assert main(['pose', 'eval', '--checkpoint', str(untrained), *data_args(dict(small, val_images=images),
                                                                            train=False)]) == 2
    one_error_line(capsys, 'images of another size than the annotation file says', first.name)
    (images / first.name).write_text('not a picture')
    assert main(['pose', 'train', *data_args(dict(small, val_images=images)), '--output', str(tmp_path / 'run')]) == 2
    one_error_line(capsys, 'files that are not readable images', first.name)
    assert not (tmp_path / 'run').exists()


def test_synth_takes_its_folder_as_detect_shapes_does_and_never_writes_over_a_set(tmp_path, capsys):
    """`scnet pose synth DIR`, as `scnet detect shapes DIR` (--output DIR still works); a folder holding images
    of another set is refused before anything is written, not only one holding its annotation files."""
    assert main(['pose', 'synth', str(tmp_path / 'a'), '--num-train', '1', '--num-val', '1', '--image-size', '32']) == 0
    assert (tmp_path / 'a' / 'person_keypoints_val.json').is_file()
    assert main(['pose', 'synth', '--output', str(tmp_path / 'b'), '--num-train', '1', '--num-val', '1',
                 '--image-size', '32']) == 0
    assert (tmp_path / 'b' / 'detections_val.json').is_file()
    capsys.readouterr()
    mine = tmp_path / 'mine'
    (mine / 'train').mkdir(parents=True)
    (mine / 'train' / '000000.png').write_bytes(b'my photo')
    assert main(['pose', 'synth', str(mine)]) == 2
    assert capsys.readouterr().err.strip().endswith(f'{mine} already holds a data set (train); '
                                                    'choose another output folder')
    assert (mine / 'train' / '000000.png').read_bytes() == b'my photo' and not (mine / 'val').exists()
    with pytest.raises(SystemExit):
        main(['pose', 'synth', str(tmp_path / 'c'), '--output', str(tmp_path / 'd')])
    assert 'not allowed with argument' in capsys.readouterr().err
