"""`scnet detect`: Faster / Mask R-CNN over zoo backbones, trained and evaluated on rendered COCO-format shapes.

Every run here is single-threaded (``torch.set_num_threads(1)``): on a shared 2-core machine the detectors'
many small operations run several times faster on one thread than on two competing for busy cores.
"""
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
from scnet.tasks.detection import METRICS, build_detector, list_detection_recipes, load_detection_recipe, load_detector
from scnet.tasks.detection.engine import lr_factor
from scnet.tasks.eval_report import EvalReport
from scnet.tasks.synthetic import SHAPES, make_shapes_coco
from scnet.train.recipe import RecipeError
from scnet.weights import save_state_dict
from scnet.weights.io import read_metadata
from tests.test_train import write_folder

REPO = Path(__file__).resolve().parents[1]
#: The short CPU run whose AP the README quotes: `--config shapes --image-size 96 --epochs 8` on 32 + 16 images.
AP_RUN = ['--config', 'shapes', '--image-size', '96', '--epochs', '8', '--seed', '0']


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """32 training and 16 validation images of 96 px."""
    return make_shapes_coco(tmp_path_factory.mktemp('shapes'), num_train=32, num_val=16, image_size=96, seed=0)


@pytest.fixture
def tiny(tmp_path):
    """8 + 4 images of 64 px: for runs that only have to work, not learn."""
    return make_shapes_coco(tmp_path / 'tiny', num_train=8, num_val=4, image_size=64, seed=1)


def read_metrics(run):
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]


def detect_train(data, output, *extra):
    return main(['detect', 'train', *data.cli_args(), '--output', str(output), '--quiet', *extra])


def tiny_args(task='bbox'):
    return ['--config', 'shapes', '--task', task, '--image-size', '64', '--epochs', '2', '--batch-size', '4']


@pytest.mark.parametrize('action', ['train', 'eval', 'predict', 'shapes'])
def test_every_detect_action_has_help(action, capsys):
    with pytest.raises(SystemExit) as e:
        main(['detect', action, '--help'])
    assert e.value.code == 0 and f'usage: scnet detect {action}' in capsys.readouterr().out


def test_shapes_command_writes_a_set_and_says_how_to_train_on_it(tmp_path, capsys):
    assert main(['detect', 'shapes', str(tmp_path / 's'), '--num-train', '2', '--num-val', '1',
                 '--image-size', '64']) == 0
    assert 'scnet detect train --config shapes' in capsys.readouterr().out
    assert len(list((tmp_path / 's' / 'train').glob('*.png'))) == 2
    assert (tmp_path / 's' / 'instances_val.json').is_file()
    assert main(['detect', 'shapes', str(tmp_path / 't'), '--image-size', '8']) == 2


def test_shapes_command_refuses_a_folder_that_holds_a_data_set(tmp_path, capsys):
    """As `scnet pose synth`: a second set written over the first would replace its files."""
    root = tmp_path / 's'
    assert main(['detect', 'shapes', str(root), '--num-train', '2', '--num-val', '1', '--image-size', '32']) == 0
    before = {p: p.read_bytes() for p in root.rglob('*') if p.is_file()}
    capsys.readouterr()
    assert main(['detect', 'shapes', str(root), '--num-train', '3', '--num-val', '1', '--image-size', '32',
                 '--seed', '1']) == 2
    _one_error_line(capsys, f'{root} already holds a data set (instances_train.json, instances_val.json, train, '
                            'val); choose another output folder')
    assert {p: p.read_bytes() for p in root.rglob('*') if p.is_file()} == before
    (root / 'instances_train.json').unlink()
    (root / 'instances_val.json').unlink()   # images left from an interrupted run are not overwritten either
    assert main(['detect', 'shapes', str(root), '--image-size', '32']) == 2
    _one_error_line(capsys, 'already holds a data set (train, val)')


# --- every backbone of the zoo ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', scnet.list_models())
def test_every_zoo_backbone_builds_faster_and_mask_rcnn(name):
    """Built on the meta device (no memory, no init time); the FPN runs on a meta image, so the four stages
    are wired with the right strides and widths."""
    with torch.device('meta'):
        faster = build_detector('bbox', name, num_classes=80)
        mask = build_detector('segm', name, num_classes=80)
        features = mask.backbone.eval()(torch.empty(1, 3, 256, 256))
    assert type(faster).__name__ == 'FasterRCNN' and type(mask).__name__ == 'MaskRCNN'
    assert faster.roi_heads.box_predictor.cls_score.out_features == 81  # 80 categories + background
    assert mask.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 81
    strides = {'0': 4, '1': 8, '2': 16, '3': 32, 'pool': 64}
    if name.endswith('_cifar'):  # stride-1 stem without max-pool: stages at strides 1-8
        strides = {k: v // 4 for k, v in strides.items()}
    assert {k: (v.shape[1], 256 // v.shape[-1]) for k, v in features.items()} == \
        {k: (256, s) for k, s in strides.items()}


def test_fpn_backbone_takes_the_stages_asked_for():
    """torchvision's returned_layers: (2, 3, 4) gives P3-P5 (and P6), named '0'-'2' in order."""
    from scnet.tasks.backbone import build_fpn_backbone

    with torch.device('meta'):
        fpn = build_fpn_backbone('scnet50', returned_layers=(2, 3, 4), frozen_bn=False, trainable_layers=5)
        features = fpn.eval()(torch.empty(1, 3, 256, 256))
    assert {k: 256 // v.shape[-1] for k, v in features.items()} == {'0': 8, '1': 16, '2': 32, 'pool': 64}
    for bad in ((0, 1), (3, 2), (), 'layer4', (2, 2)):
        with pytest.raises(scnet.InvalidArgumentError, match='returned_layers must be increasing stage numbers'):
            build_fpn_backbone('scnet26', returned_layers=bad)


def test_full_size_backbone_detects_on_cpu():
    """A real forward pass of Mask R-CNN on SCNeXt-50 (eval mode: boxes, labels, scores, masks per image)."""
    torch.manual_seed(0)
    model = build_detector('segm', 'scnext50_32x4d', num_classes=3, min_size=96, max_size=128).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 96, 128), torch.rand(3, 80, 80)])
    assert len(out) == 2 and set(out[0]) == {'boxes', 'labels', 'scores', 'masks'}
    assert out[0]['masks'].shape[-2:] == (96, 128) and out[1]['masks'].shape[-2:] == (80, 80)


# --- training, evaluation, prediction --------------------------------------------------------------------


@pytest.fixture(scope='module')
def bbox_run(shapes, tmp_path_factory):
    run = tmp_path_factory.mktemp('bbox') / 'run'
    recipe = run.parent / 'eval_at_end.yaml'
    recipe.write_text('base: shapes\neval_every: 4\n')
    args = [a if a != 'shapes' else str(recipe) for a in AP_RUN]
    assert main(['detect', 'train', *shapes.cli_args(), '--task', 'bbox', '--output', str(run), '--quiet',
                 *args]) == 0
    return run


@pytest.mark.slow
def test_faster_rcnn_loss_falls_and_ap_is_far_above_chance(bbox_run, capsys):
    rows = read_metrics(bbox_run)
    assert [r['epoch'] for r in rows] == list(range(1, 9))
    for key in ('lr', 'train_loss', 'train_loss_classifier', 'train_loss_box_reg', 'train_loss_objectness',
                'train_loss_rpn_box_reg', 'images_per_sec', 'epoch_time_s'):
        assert key in rows[0]
    assert 'bbox_AP' in rows[3] and 'bbox_AP' not in rows[0]  # eval_every 4 (and always the last epoch)
    assert rows[-1]['train_loss'] < 0.8 * rows[0]['train_loss']
    last = rows[-1]
    print(f"shapes, 8 epochs: bbox AP {last['bbox_AP']:.1f} AP50 {last['bbox_AP50']:.1f} "
          f"AP75 {last['bbox_AP75']:.1f}")
    # chance is ~0: random boxes almost never reach IoU 0.5 with the right category
    assert last['bbox_AP50'] > 25 and last['bbox_AP'] > 10
    assert last['val_images'] == 16 and 'segm_AP' not in last
    assert rows[-1]['lr'] < rows[0]['lr'] or rows[0]['lr'] < 0.02  # warm-up, then decay after epoch 6
    config = json.loads((bbox_run / 'config.json').read_text())
    assert config['categories'] == [{'id': i + 1, 'name': n} for i, n in enumerate(SHAPES)]
    assert (config['min_size'], config['lr_steps'], config['resolved_frozen_bn']) == (96, [6.0], False)
    with safe_open(str(bbox_run / 'model.safetensors'), 'pt') as f:
        meta = f.metadata()
    assert meta['task'] == 'bbox' and meta['backbone'] == 'scnet26' and meta['min_size'] == '96'
    assert [c['name'] for c in json.loads(meta['categories'])] == list(SHAPES)
    assert any((bbox_run / 'tensorboard').iterdir())


@pytest.mark.slow
def test_eval_json_has_the_six_metrics_and_matches_training(bbox_run, shapes, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / 'eval.json'
    assert main(['detect', 'eval', '--checkpoint', str(bbox_run / 'model.safetensors'), '--val-ann',
                 str(shapes.val_ann), '--val-images', str(shapes.val_images), '--format', 'json', '--workers', '0',
                 '--quiet', '--output', str(out), '--results', str(tmp_path / 'detections.json')]) == 0
    result = json.loads(capsys.readouterr().out)  # stdout is the JSON alone: pycocotools' prints kept out
    assert result == json.loads(out.read_text())
    # the detections in COCO's results format: pycocotools scores them to the same AP
    from scnet.tasks.coco_files import load_coco
    from scnet.tasks.detection.evaluate import coco_metrics
    detections = json.loads((tmp_path / 'detections.json').read_text())
    assert len(detections) == result['counts']['detections']
    assert set(detections[0]) == {'image_id', 'category_id', 'bbox', 'score'}
    again = coco_metrics(load_coco(shapes.val_ann), detections, ('bbox',))
    assert again['bbox_AP'] == pytest.approx(result['metrics']['bbox_AP'])
    assert set(result['metrics']) == {f'bbox_{m}' for m in METRICS}
    assert all(isinstance(v, float) for v in result['metrics'].values())
    last = read_metrics(bbox_run)[-1]
    assert result['metrics'] == pytest.approx({f'bbox_{m}': last[f'bbox_{m}'] for m in METRICS})
    assert (result['task'], result['images'], result['counts']['detections']) == ('bbox', 16, last['val_detections'])
    assert set(result) == {f.name for f in dataclasses.fields(EvalReport)}   # the shape of `scnet pose eval`'s
    assert main(['detect', 'eval', '--checkpoint', str(bbox_run), '--val-ann', str(shapes.val_ann),
                 '--val-images', str(shapes.val_images), '--workers', '0', '--quiet']) == 0
    table = capsys.readouterr().out
    assert 'AP50' in table and 'APl' in table and table.splitlines()[-1].startswith('bbox')
    # a last.pt of the old code (no metadata of its own: read from its run settings) describes the same detector
    state = torch.load(bbox_run / 'last.pt', weights_only=True)
    assert state['checkpoint'] == read_metadata(bbox_run / 'model.safetensors')
    del state['checkpoint']
    torch.save(state, tmp_path / 'old.pt')
    assert load_detector(tmp_path / 'old.pt')[1] == load_detector(bbox_run / 'model.safetensors')[1]


@pytest.mark.slow
def test_predict_draws_on_any_image_and_writes_pngs_of_its_size(bbox_run, shapes, tmp_path, capsys):
    photos = tmp_path / 'photos'
    photos.mkdir()
    Image.open(shapes.val_images / '000001.png').resize((150, 110)).save(photos / 'wide.jpg')
    out = tmp_path / 'drawn'
    assert main(['detect', 'predict', '--checkpoint', str(bbox_run / 'model.safetensors'), '--images',
                 str(photos), str(shapes.val_images / '000000.png'), '--output', str(out), '--quiet',
                 '--score-threshold', '0.3']) == 0
    assert sorted(p.name for p in out.glob('*.png')) == ['000000.png', 'wide.png']
    assert Image.open(out / 'wide.png').size == (150, 110) and Image.open(out / '000000.png').size == (96, 96)
    drawn = np.asarray(Image.open(out / '000000.png'))
    assert not np.array_equal(drawn, np.asarray(Image.open(shapes.val_images / '000000.png')))  # boxes drawn
    summary = json.loads((out / 'predictions.json').read_text())
    found = summary[1]['detections']
    assert found and all(d['category'] in SHAPES and d['score'] >= 0.3 and len(d['bbox']) == 4 for d in found)
    assert '2 image(s)' in capsys.readouterr().out


@pytest.mark.slow
def test_mask_rcnn_killed_run_resumes_to_the_same_weights(tiny, tmp_path, capsys, monkeypatch):
    """Stopped after epoch 1 (Ctrl-C), resumed: the same weights, bit for bit, as an uninterrupted run."""
    import scnet.tasks.detection.engine as detection

    full, stopped = tmp_path / 'full', tmp_path / 'stopped'
    assert detect_train(tiny, full, *tiny_args('segm')) == 0
    rows = read_metrics(full)
    for kind in ('bbox', 'segm'):
        assert all(f'{kind}_{m}' in rows[-1] for m in METRICS)
    assert 'train_loss_mask' in rows[0]

    real = detection.train_one_epoch

    def interrupted(*args, epoch, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(detection, 'train_one_epoch', interrupted)
    assert detect_train(tiny, stopped, *tiny_args('segm')) == 130
    assert torch.load(stopped / 'last.pt', weights_only=True)['epoch'] == 1
    assert not (stopped / 'model.safetensors').exists()
    monkeypatch.setattr(detection, 'train_one_epoch', real)
    restarted = tmp_path / 'restarted'
    shutil.copytree(stopped, restarted)
    assert main(['detect', 'train', '--output', str(stopped), '--resume', '--quiet']) == 0
    # a worker torchrun restarted runs the first command line again, without --resume, and continues too
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    assert detect_train(tiny, restarted, *tiny_args('segm')) == 0
    monkeypatch.delenv('TORCHELASTIC_RESTART_COUNT')
    a = load_file(full / 'model.safetensors')
    for b in (load_file(stopped / 'model.safetensors'), load_file(restarted / 'model.safetensors')):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(stopped) == [dict(r, epoch_time_s=s['epoch_time_s'], images_per_sec=s['images_per_sec'])
                                     for r, s in zip(rows, read_metrics(stopped))]

    capsys.readouterr()
    assert main(['detect', 'eval', '--checkpoint', str(full / 'last.pt'), '--val-ann', str(tiny.val_ann),
                 '--val-images', str(tiny.val_images), '--format', 'json', '--workers', '0', '--quiet']) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result['metrics']) == {f'{kind}_{m}' for kind in ('bbox', 'segm') for m in METRICS}
    assert result['metrics'] == pytest.approx({k: rows[-1][k] for k in result['metrics']})
    # translucent masks drawn under the boxes
    assert main(['detect', 'predict', '--checkpoint', str(full), '--images', str(tiny.val_images / '000000.png'),
                 '--output', str(tmp_path / 'drawn'), '--score-threshold', '0', '--quiet']) == 0
    assert Image.open(tmp_path / 'drawn' / '000000.png').size == (64, 64)
    detections = json.loads((tmp_path / 'drawn' / 'predictions.json').read_text())[0]['detections']
    assert detections and all(d['segmentation']['size'] == [64, 64] for d in detections)  # each mask as RLE
    from pycocotools import mask as mask_utils
    assert all(mask_utils.decode(dict(d['segmentation'], counts=d['segmentation']['counts'].encode())).shape ==
               (64, 64) for d in detections)


def test_existing_run_is_never_overwritten_and_resume_needs_one(tiny, tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'model.safetensors').write_bytes(b'x')
    assert detect_train(tiny, run, *tiny_args()) == 2
    assert 'already holds a run: pass --resume' in capsys.readouterr().err
    assert main(['detect', 'train', '--output', str(tmp_path / 'empty'), '--resume']) == 2
    assert 'nothing to resume' in capsys.readouterr().err


def test_a_last_batch_of_one_image_is_left_out(tmp_path, capsys):
    """9 images in batches of 4 leave one: batch norm cannot learn from a single image, so that batch is left
    out instead of stopping every epoch with a message about the batch size the user gave."""
    nine = make_shapes_coco(tmp_path / 'nine', num_train=9, num_val=2, image_size=64, seed=2)
    assert detect_train(nine, tmp_path / 'run', '--config', 'shapes', '--image-size', '64', '--epochs', '1',
                        '--batch-size', '4') == 0, capsys.readouterr().err
    assert read_metrics(tmp_path / 'run')[0]['epoch'] == 1


def test_resume_takes_the_runs_settings_and_refuses_a_config_that_changes_them(tmp_path, capsys):
    """On --resume the run's config.json is the base (as for scnet train): a --config given too may only repeat
    it, since taking the file as the base would undo what flags changed in the run (an extended --epochs)."""
    from scnet.tasks.detection import load_detection_recipe

    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.json').write_text(json.dumps(load_detection_recipe('shapes', epochs=6).to_dict()))
    assert main(['detect', 'train', '--output', str(run), '--resume', '--config', 'shapes', '--quiet']) == 2
    err = capsys.readouterr().err
    assert "--config shapes sets epochs 12 (the run: 6)" in err and "on --resume the run's own settings" in err
    # the run's own command line again, with --resume: the file read with --epochs 6 (decay points rescaled)
    # repeats the run, so the check lets it through (to the run folder, which has no last.pt here)
    assert main(['detect', 'train', '--output', str(run), '--resume', '--config', 'shapes', '--epochs', '6',
                 '--quiet']) == 2
    err = capsys.readouterr().err
    assert "on --resume the run's own settings" not in err and 'nothing to resume' in err
    # --image-size (the short side and the long side's limit) and a longer --epochs (decay points moved in the
    # run as in the file) were refused as changes the file made: "sets min_size 128 (the run: 64)"
    (run / 'config.json').write_text(json.dumps(load_detection_recipe('shapes', epochs=6, min_size=64,
                                                                      max_size=64).to_dict()))
    assert main(['detect', 'train', '--output', str(run), '--resume', '--config', 'shapes', '--epochs', '9',
                 '--image-size', '64', '--quiet']) == 2
    err = capsys.readouterr().err
    assert "on --resume the run's own settings" not in err and 'nothing to resume' in err, err
    # the folder given to another training command: named as a detection run, with the command that continues it
    for command in (['train'], ['pose', 'train']):
        assert main([*command, '--output', str(run), '--resume', '--quiet']) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and 'the settings of a run of `scnet detect train`' in err and \
            f'`scnet detect train --output {run} --resume`' in err, err
    assert sorted(p.name for p in run.iterdir()) == ['config.json']


# --- backbone weights ------------------------------------------------------------------------------------


def _body_matches(model, state, keys):
    body = model.backbone.body.state_dict()
    return all(torch.equal(body[k], state[k]) for k in keys)


def test_classification_checkpoint_of_scnet_train_loads_into_the_backbone(tmp_path):
    """A ``scnet train`` model.safetensors: its weights, with frozen BN statistics and its model options."""
    torch.manual_seed(0)
    kwargs = {'channels': [16, 32, 64, 128]}
    classifier = scnet.create_model('scnet26', num_classes=3, **kwargs)
    for m in classifier.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    state = classifier.state_dict()
    path = save_state_dict(state, tmp_path / 'model.safetensors',
                           metadata={'model': 'scnet26', 'model_kwargs': json.dumps(kwargs)})
    recipe = load_detection_recipe('shapes', backbone_checkpoint=str(path))
    from scnet.tasks.detection.model import resolve_backbone

    checkpoint, pretrained, resolved = resolve_backbone(recipe)
    assert (checkpoint, pretrained, resolved) == (str(path), False, kwargs)
    # the run's folder stands for its model.safetensors, as wherever a checkpoint is read
    assert resolve_backbone(load_detection_recipe('shapes', backbone_checkpoint=str(tmp_path))) == \
        (str(path), False, kwargs)
    model = build_detector('bbox', 'scnet26', 3, backbone_checkpoint=checkpoint, backbone_kwargs=resolved)
    keys = [k for k in state if not k.startswith('fc.') and 'num_batches_tracked' not in k]
    assert _body_matches(model, state, keys)
    body = model.backbone.body
    assert type(body.layer1[0].bn1).__name__ == 'FrozenBatchNorm2d'  # statistics frozen
    assert not any(p.requires_grad for n, p in body.named_parameters() if n.startswith(('conv1', 'layer1')))
    assert all(p.requires_grad for n, p in body.named_parameters() if n.startswith(('layer2', 'layer3', 'layer4')))


def test_authors_checkpoint_loads_into_the_backbone(tmp_path):
    from scnet.weights import convert_authors_state_dict
    from tests.authors_reference import random_authors_state_dict

    theirs = random_authors_state_dict('scnet50')
    path = tmp_path / 'scnet50-authors.pth'
    torch.save(theirs, path)
    model = build_detector('segm', 'scnet50', 2, backbone_checkpoint=str(path))
    ours = convert_authors_state_dict(theirs)
    assert _body_matches(model, ours, [k for k in ours if not k.startswith('fc.') and 'num_batches' not in k])


def test_a_backbone_checkpoint_of_other_widths_replaces_the_recipes_and_the_run_resumes_as_started(
        tiny, tmp_path, capsys):
    """shapes' narrow widths belong to the scnet26 it trains from scratch: a classification checkpoint records
    its own, which the backbone is built with (said in a note), and the run resumes with the command that
    started it (config.json keeps the recipe's options as given, and those built with apart)."""
    torch.manual_seed(0)
    classifier = scnet.create_model('scnet26', num_classes=3, channels=(8, 16, 32, 64))
    path = save_state_dict(classifier.state_dict(), tmp_path / 'cls' / 'model.safetensors',
                           metadata={'model': 'scnet26', 'model_kwargs': json.dumps({'channels': [8, 16, 32, 64]})})
    run = tmp_path / 'run'
    argv = [*tiny_args(), '--backbone-checkpoint', str(path)]
    assert detect_train(tiny, run, *argv, '--epochs', '1') == 0  # (the last --epochs counts)
    err = capsys.readouterr().err
    assert "note: scnet26 is built as" in err and "{'channels': [8, 16, 32, 64]}, not with the recipe's " \
        "{'channels': [16, 32, 64, 128]}" in err
    config = json.loads((run / 'config.json').read_text())
    assert config['backbone_kwargs'] == {'channels': [16, 32, 64, 128]}
    assert config['resolved_backbone_kwargs'] == {'channels': [8, 16, 32, 64]}
    detector, meta = load_detector(run / 'model.safetensors')
    assert meta.backbone_kwargs == {'channels': [8, 16, 32, 64]}
    assert detector.backbone.body.layer1[0].conv3.weight.shape[0] == 32  # 8 x 4: the checkpoint's widths
    assert detect_train(tiny, run, *argv, '--resume') == 0, capsys.readouterr().err
    assert [row['epoch'] for row in read_metrics(run)] == [1, 2]
    assert detect_train(tiny, run, *argv, '--resume', '--epochs', '1') == 2  # fewer epochs than it has trained
    assert 'the run has trained 2 epochs already; --epochs 1 would end it before them: give --epochs 2 or more' \
        in capsys.readouterr().err
    assert [row['epoch'] for row in read_metrics(run)] == [1, 2]
    (run / 'config.json').unlink()  # only last.pt copied to another machine: its settings are restored from it
    assert detect_train(tiny, run, '--resume', '--epochs', '3') == 0
    assert f'{run / "config.json"} was missing: restored from the settings' in capsys.readouterr().err
    assert [row['epoch'] for row in read_metrics(run)] == [1, 2, 3]
    assert json.loads((run / 'config.json').read_text())['resolved_backbone_kwargs'] == {'channels': [8, 16, 32, 64]}
    written = (run / 'config.json').read_text()  # edited since the run wrote it: the file is named, not a flag
    (run / 'config.json').write_text(written.replace('"backbone": "scnet26"', '"backbone": "scnet50"'))
    assert detect_train(tiny, run, '--resume', '--epochs', '4') == 2
    assert "config.json has backbone 'scnet50', the run (last.pt) 'scnet26': the file was changed" in \
        capsys.readouterr().err


def test_sigterm_stops_at_the_next_step_naming_what_is_saved_and_the_resume(tiny, tmp_path, monkeypatch, capsys):
    """A scheduler's SIGTERM used to end detect train silently (status 143 from the signal itself). Now the run
    stops at the next step with the command that continues it; the resume trains the cut epoch again."""
    import signal

    import scnet.tasks.detection.engine as engine

    losses, calls = engine._losses, []

    def losses_then_signal(model, images, targets):
        calls.append(1)
        if len(calls) == 3:  # the first step of epoch 2 (8 images in batches of 4: 2 steps an epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return losses(model, images, targets)

    monkeypatch.setattr(engine, '_losses', losses_then_signal)
    run = tmp_path / 'run'
    assert detect_train(tiny, run, *tiny_args()) == 143
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == (f'scnet detect: stopped by SIGTERM at epoch 2, step 1/2; {run / "last.pt"} holds '
                                    f'the run up to epoch 1 (epoch 2 is trained again): continue with scnet detect '
                                    f'train --output {run} --resume')
    assert [row['epoch'] for row in read_metrics(run)] == [1]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back
    monkeypatch.undo()
    assert detect_train(tiny, run, *tiny_args(), '--resume') == 0
    assert [row['epoch'] for row in read_metrics(run)] == [1, 2]


def test_wrong_backbone_checkpoints_are_named(tiny, tmp_path, capsys):
    path = save_state_dict(scnet.create_model('resnet26_cifar', num_classes=3).state_dict(),
                           tmp_path / 'model.safetensors', metadata={'model': 'resnet26_cifar'})
    assert detect_train(tiny, tmp_path / 'a', *tiny_args(), '--backbone-checkpoint', str(path)) == 2
    assert 'holds weights of resnet26_cifar (recorded in it), not of scnet26: pass --backbone resnet26_cifar' \
        in capsys.readouterr().err
    assert detect_train(tiny, tmp_path / 'b', *tiny_args(), '--backbone-checkpoint', str(tmp_path / 'nope.pth')) == 2
    assert 'no such backbone checkpoint' in capsys.readouterr().err
    assert main(['detect', 'eval', '--checkpoint', str(path), '--val-ann', str(tiny.val_ann), '--val-images',
                 str(tiny.val_images)]) == 2
    assert 'not a detection checkpoint' in capsys.readouterr().err
    # a pose run's files: named as such, not as a detection checkpoint or one lacking fields
    pose = save_state_dict(scnet.create_model('resnet26_cifar', num_classes=3).state_dict(),
                           tmp_path / 'pose' / 'model.safetensors', metadata={'backbone': 'scnet26',
                                                                              'keypoints': '{}', 'task': 'pose'})
    assert detect_train(tiny, tmp_path / 'c', *tiny_args(), '--backbone-checkpoint', str(pose)) == 2
    assert 'is a pose checkpoint, not a classification one' in capsys.readouterr().err
    torch.save({'model': {}, 'config': {}, 'checkpoint': {'backbone': 'scnet26', 'keypoints': '{}'}},
               tmp_path / 'pose' / 'last.pt')
    assert main(['detect', 'eval', '--checkpoint', str(tmp_path / 'pose' / 'last.pt'), '--val-ann',
                 str(tiny.val_ann), '--val-images', str(tiny.val_images)]) == 2
    assert 'last.pt: not a detection checkpoint' in capsys.readouterr().err
    no_annotations = tmp_path / 'empty.json'
    no_annotations.write_text(json.dumps(dict(json.loads(tiny.val_ann.read_text()), annotations=[])))
    assert main(['detect', 'eval', '--checkpoint', str(tiny_detector_checkpoint(tmp_path / 'e.safetensors')),
                 '--val-ann', str(no_annotations), '--val-images', str(tiny.val_images)]) == 2
    assert 'empty.json: no annotations: nothing to train on or to score against' in capsys.readouterr().err
    for size in ('1', '31'):
        assert main(['detect', 'eval', '--checkpoint', str(tiny_detector_checkpoint(tmp_path / 'd.safetensors')),
                     '--val-ann', str(tiny.val_ann), '--val-images', str(tiny.val_images), '--image-size', size]) == 2
        assert f'must be a whole number >= 32, got {size}' in capsys.readouterr().err
    from scnet.tasks.detection import build_detector
    for kwargs, message in ((dict(num_classes=0), 'num_classes must be a whole number >= 1, got 0'),
                            (dict(num_classes='3'), "num_classes must be a whole number >= 1, got '3'"),
                            (dict(min_size=0), 'min_size must be a whole number >= 32, got 0'),
                            (dict(min_size=64, max_size=48), 'max_size must be a whole number >= 64, got 48')):
        with pytest.raises(scnet.InvalidArgumentError, match=message):
            build_detector('bbox', 'scnet26', **{'num_classes': 3, **kwargs})


def tiny_detector_checkpoint(path: Path) -> Path:
    """An untrained detector of the shapes recipe's narrow backbone, saved as `scnet detect train` saves one."""
    from scnet.tasks.detection import DetectionMetadata

    recipe = load_detection_recipe('shapes')
    meta = DetectionMetadata(task='bbox', backbone=recipe.backbone, backbone_kwargs=recipe.backbone_kwargs,
                             trainable_layers=5, frozen_bn=False,
                             categories=[{'id': k + 1, 'name': n} for k, n in enumerate(SHAPES)], min_size=64,
                             max_size=64, detector=recipe.arch())
    torch.manual_seed(0)
    return save_state_dict(meta.build().state_dict(), path, metadata=meta.to_metadata())


def test_predict_reads_every_image_before_writing_anything(tiny, tmp_path, capsys):
    """A damaged image among good ones stops predict before its first drawing: no half-done output folder
    without predictions.json."""
    checkpoint = tiny_detector_checkpoint(tmp_path / 'model.safetensors')
    photos = tmp_path / 'photos'
    shutil.copytree(tiny.val_images, photos)
    bad = photos / 'zz_damaged.png'   # sorted last: the good images come first
    bad.write_bytes((photos / '000000.png').read_bytes()[:200])
    (photos / 'zz_text.png').write_text('not a picture')
    out = tmp_path / 'drawn'
    assert main(['detect', 'predict', '--checkpoint', str(checkpoint), '--images', str(photos), '--output', str(out),
                 '--quiet']) == 2
    _one_error_line(capsys, '2 of the 6 images cannot be decoded', str(bad), 'zz_text.png',
                    'fix or remove them (nothing was written)')
    assert not out.exists()
    bad.unlink()
    (photos / 'zz_text.png').unlink()
    assert main(['detect', 'predict', '--checkpoint', str(checkpoint), '--images', str(photos), '--output', str(out),
                 '--quiet']) == 0
    assert len(list(out.glob('*.png'))) == 4 and (out / 'predictions.json').is_file()


def test_an_image_too_thin_for_the_resize_is_named_before_any_work(tiny, tmp_path, capsys):
    """A 2 x 300 image becomes 0 pixels wide in torchvision's resize (short side min_size, long side at most
    max_size): a RuntimeError from interpolate, in the middle of an epoch for train and eval."""
    from scnet.tasks.coco_files import CocoDataError, check_images, load_coco, resize_problem

    checkpoint = tiny_detector_checkpoint(tmp_path / 'model.safetensors')  # min_size = max_size = 64
    photos = tmp_path / 'photos'
    photos.mkdir()
    Image.new('RGB', (2, 300), 'gray').save(photos / 'thin.png')
    Image.new('RGB', (40, 30), 'gray').save(photos / 'fine.png')
    out = tmp_path / 'drawn'
    assert main(['detect', 'predict', '--checkpoint', str(checkpoint), '--images', str(photos), '--output', str(out),
                 '--quiet']) == 2
    _one_error_line(capsys, '1 image(s) too thin to resize', 'thin.png is 2x300 pixels',
                    "(short side 64, long side at most 64) makes 0 pixels wide", 'nothing was written')
    assert not out.exists()
    assert resize_problem(2, 300, None) is None and resize_problem(40, 30, (64, 64)) is None
    assert resize_problem(300, 4, (64, 64)).endswith('makes 0 pixels high; crop or pad it to at most 64:1')
    # listed in an annotation file: named when the files are checked, before training or evaluating
    ann = json.loads(tiny.val_ann.read_text())
    first = ann['images'][0]
    Image.new('RGB', (300, 2), 'gray').save(tiny.val_images / first['file_name'])
    first.update(width=300, height=2)
    ann['annotations'] = [a for a in ann['annotations'] if a['image_id'] != first['id']]  # (boxes would not fit)
    tiny.val_ann.write_text(json.dumps(ann))
    coco = load_coco(tiny.val_ann, tiny.val_images, task='bbox')
    check_images(coco, tiny.val_images, str(tiny.val_ann))  # no resize given: nothing to say
    with pytest.raises(CocoDataError, match=r'1 images too thin to resize: .* is 300x2 pixels'):
        check_images(coco, tiny.val_images, str(tiny.val_ann), resize=(64, 64))
    assert main(['detect', 'eval', '--checkpoint', str(checkpoint), '--val-ann', str(tiny.val_ann), '--val-images',
                 str(tiny.val_images), '--quiet', '--workers', '0']) == 2
    _one_error_line(capsys, 'images too thin to resize', 'is 300x2 pixels')


def test_predict_never_replaces_an_input_image_and_keeps_a_drawing_per_image(tiny, tmp_path, capsys):
    """Drawings into the folder of the images would replace those of the same name (a .png): refused before
    anything is written. Images whose names differ only in extension, or look like a made-unique name,
    keep a drawing each."""
    from scnet.tasks.detection.draw import predict

    checkpoint = tiny_detector_checkpoint(tmp_path / 'model.safetensors')
    photos = tmp_path / 'photos'
    shutil.copytree(tiny.val_images, photos)
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    assert main(['detect', 'predict', '--checkpoint', str(checkpoint), '--images', str(photos), '--output',
                 str(photos), '--quiet']) == 2
    _one_error_line(capsys, 'would replace the input image', 'another --output folder')
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
    same = tmp_path / 'same'
    same.mkdir()
    first = sorted(photos.glob('*.png'))[0].read_bytes()
    Image.open(photos / sorted(before)[0]).convert('RGB').save(same / 'x.jpg')
    for name in ('x.png', 'x_2.png'):
        (same / name).write_bytes(first)
    out = tmp_path / 'out'
    summary = predict(checkpoint, same, out)  # one path as well as a list
    outputs = [Path(r['output']).name for r in summary]
    assert len(set(outputs)) == 3 and sorted(p.name for p in out.glob('*.png')) == sorted(outputs)


def test_damaged_checkpoint_is_called_damaged(tiny, tmp_path, capsys):
    """Not "not a detection checkpoint", which would send the user looking for another file."""
    good = tiny_detector_checkpoint(tmp_path / 'model.safetensors')
    damaged = tmp_path / 'damaged.safetensors'
    damaged.write_bytes(good.read_bytes()[:1000])
    for checkpoint in (damaged, tmp_path / 'noise.safetensors'):
        if not checkpoint.exists():
            checkpoint.write_bytes(bytes(range(256)) * 4)
        assert main(['detect', 'eval', '--checkpoint', str(checkpoint), '--val-ann', str(tiny.val_ann),
                     '--val-images', str(tiny.val_images)]) == 2
        _one_error_line(capsys, f'{checkpoint}: not a readable safetensors file, damaged or truncated')
    # weights that do not fit the detector the metadata describes: which keys, in one line
    edited = load_file(good)
    edited.pop('roi_heads.box_predictor.bbox_pred.bias')
    edited['rpn.head.cls_logits.bias'] = torch.zeros(7)
    edited = save_state_dict(edited, tmp_path / 'edited.safetensors', metadata=read_metadata(good))
    assert main(['detect', 'eval', '--checkpoint', str(edited), '--val-ann', str(tiny.val_ann), '--val-images',
                 str(tiny.val_images)]) == 2
    _one_error_line(capsys, f'{edited} does not fit the bbox detector its metadata describes: the file was damaged or '
                            'edited', 'keys: 1 of another shape (checkpoint vs network) (e.g. rpn.head.cls_logits.bias '
                            '(7,) vs (3,)), 1 missing from the checkpoint (e.g. roi_heads.box_predictor.bbox_pred.bias)')


def test_pretrained_backbone_out_of_reach_fails_in_seconds_naming_the_flag(tiny, tmp_path, capsys, monkeypatch):
    """Offline, the ImageNet weights are asked of a server that refuses (here: a closed local port, through
    the weights mirror); the run stops at once, saying how to give a local copy, and leaves no run folder."""
    import time

    monkeypatch.setenv('SCNET_WEIGHTS_MIRROR', 'http://127.0.0.1:9/weights')
    monkeypatch.setenv('SCNET_CACHE', str(tmp_path / 'cache'))   # nothing cached
    for variable in ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(variable, raising=False)
    start = time.perf_counter()
    assert detect_train(tiny, tmp_path / 'run', *tiny_args(), '--backbone', 'scnet50', '--backbone-checkpoint',
                        'pretrained') == 2
    assert time.perf_counter() - start < 60
    _one_error_line(capsys, 'scnet50: its ImageNet weights are not cached here and cannot be downloaded from '
                            'http://127.0.0.1:9/weights/scnet50-', 'pass a local copy with --backbone-checkpoint PATH')
    assert not (tmp_path / 'run').exists()


def test_backbone_checkpoint_of_another_network_is_one_line(tiny, tmp_path, capsys):
    """A file without the name of its network (an authors' .pth, a plain safetensors) that does not fit."""
    path = save_state_dict(scnet.create_model('resnet26_cifar', num_classes=3).state_dict(), tmp_path / 'w.safetensors')
    assert detect_train(tiny, tmp_path / 'run', *tiny_args(), '--backbone', 'scnet26_cifar', '--backbone-checkpoint',
                        str(path)) == 2
    _one_error_line(capsys, f'{path} does not fit scnet26_cifar: give --backbone-checkpoint a checkpoint of '
                            'scnet26_cifar, or the --backbone it holds', 'missing from the checkpoint (e.g. ',
                    'not in the network (e.g. layer1.0.conv2.weight)')


# --- bad data --------------------------------------------------------------------------------------------


def _edit(path: Path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _one_error_line(capsys, *expected):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith('scnet detect: error:')
    for text in expected:
        assert text in err, err


def test_annotation_file_that_is_not_coco_json(tiny, tmp_path, capsys):
    tiny.train_ann.write_text('{"images": [], "annotations": [')
    assert detect_train(tiny, tmp_path / 'a', *tiny_args()) == 2
    _one_error_line(capsys, str(tiny.train_ann), 'not JSON')
    tiny.train_ann.write_text('[1, 2]')
    assert detect_train(tiny, tmp_path / 'b', *tiny_args()) == 2
    _one_error_line(capsys, 'not COCO JSON')
    assert not (tmp_path / 'a').exists()  # no empty run folder left behind


def test_image_listed_but_missing(tiny, tmp_path, capsys):
    (tiny.val_images / '000002.png').unlink()
    assert detect_train(tiny, tmp_path / 'run', *tiny_args()) == 2
    _one_error_line(capsys, 'images listed but missing', '000002.png')


@pytest.mark.parametrize('box, problem', [([10, 10, 0, 12], 'zero or negative area'),
                                          ([50, 40, 30, 20], 'boxes outside their image'),
                                          ([float('nan'), 40, 10, 10], 'bbox of finite numbers')])
def test_bad_boxes_are_named(tiny, tmp_path, capsys, box, problem):
    def change(data):
        data['annotations'][3]['bbox'] = box
    _edit(tiny.train_ann, change)
    assert detect_train(tiny, tmp_path / 'run', *tiny_args()) == 2
    _one_error_line(capsys, problem, str(box))


@pytest.mark.parametrize('change, expected', [
    (lambda d: d['images'][1].update(id=1), 'duplicate image ids (give each image its own): id 1: 000000.png and '
                                            '000001.png'),
    (lambda d: d['annotations'][1].update(id=1), 'duplicate annotation ids (give each annotation its own): id 1'),
    (lambda d: d['categories'].append(dict(d['categories'][0])), 'duplicate category ids: id 1 (square)'),
    (lambda d: d['annotations'][0].update(category_id=7), 'annotations of categories the file does not list (it '
                                                          'lists 1, 2, 3): annotation 1 -> category_id 7'),
    (lambda d: d['annotations'][0].update(image_id=99), 'annotations of images the file does not list: annotation 1 '
                                                        '-> image_id 99'),
    (lambda d: d['images'][0].update(id=[1]), 'images whose id is not an integer'),
    (lambda d: [a.update(image_id=f"im{a['image_id']}") for a in d['annotations']] and
     [i.update(id=f"im{i['id']}") for i in d['images']], 'images whose id is not an integer'),
])
def test_ids_and_categories_that_do_not_add_up_are_named(tiny, tmp_path, capsys, change, expected):
    """pycocotools indexes images, annotations and categories by id: a duplicate would silently replace the
    other (training and evaluating on part of the data), an unknown one fail in the middle of a run."""
    _edit(tiny.train_ann, change)
    assert detect_train(tiny, tmp_path / 'run', *tiny_args()) == 2
    _one_error_line(capsys, str(tiny.train_ann), expected)


@pytest.mark.parametrize('segmentation, problem', [
    ([[1, 2, 3]], 'polygon [1, 2, 3] is not a list of at least 3 x, y points'),
    ('abc', "str 'abc' is neither polygons nor an RLE"),
    ({'size': [10, 10], 'counts': 'abc'}, 'RLE of size [10, 10], the image is 64x64'),
])
def test_segmentations_pycocotools_cannot_read_are_named(tiny, tmp_path, capsys, segmentation, problem):
    """They used to pass the check and fail inside pycocotools in the middle of an epoch (or, an RLE of
    another size, be evaluated silently)."""
    _edit(tiny.train_ann, lambda d: d['annotations'][0].update(segmentation=segmentation))
    assert detect_train(tiny, tmp_path / 'run', *tiny_args('segm')) == 2
    _one_error_line(capsys, 'segmentations pycocotools cannot read', problem)


def test_segm_needs_masks_and_val_categories_must_be_known(tiny, tmp_path, capsys):
    _edit(tiny.train_ann, lambda d: d['annotations'][0].pop('segmentation'))
    assert detect_train(tiny, tmp_path / 'a', *tiny_args('segm')) == 2
    _one_error_line(capsys, 'without a segmentation')
    _edit(tiny.val_ann, lambda d: d['categories'].append({'id': 9, 'name': 'star'}))
    assert detect_train(tiny, tmp_path / 'b', *tiny_args('bbox')) == 2
    _one_error_line(capsys, 'not trained on: star')


def test_images_of_another_size_or_not_images_stop_before_training(tiny, tmp_path, capsys):
    Image.new('RGB', (40, 30)).save(tiny.train_images / '000003.png')
    (tiny.train_images / '000005.png').write_text('not a picture')
    assert detect_train(tiny, tmp_path / 'run', *tiny_args()) == 2
    _one_error_line(capsys, '000003.png is 40x30 pixels, the file says 64x64', 'not readable images',
                    '000005.png')


def test_image_damaged_past_its_header_stops_the_run_naming_it(tiny, tmp_path, capsys):
    bad = tiny.val_images / '000001.png'
    bad.write_bytes(bad.read_bytes()[:200])
    assert detect_train(tiny, tmp_path / 'run', *tiny_args()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('scnet detect: error:') and f'{bad}: cannot decode the image' in err[-1]


# --- recipes, schedule, synthetic data -------------------------------------------------------------------


def test_shipped_recipes_are_the_papers_2x_setting():
    assert {'faster_rcnn_2x', 'mask_rcnn_2x', 'shapes'} <= set(list_detection_recipes())
    r = load_detection_recipe('faster_rcnn_2x')
    assert (r.task, r.min_size, r.max_size, r.batch_size, r.peak_lr, r.momentum, r.weight_decay) == \
        ('bbox', 800, 1333, 16, 0.02, 0.9, 1e-4)
    assert (r.epochs, r.lr_steps, r.lr_gamma, r.trainable_layers, r.frozen_bn) == (24, [16, 22], 0.1, 3, True)
    m = load_detection_recipe('mask_rcnn_2x')
    assert m.task == 'segm' and m.epochs == 24 and m.mask_head_dim == 256
    assert load_detection_recipe('faster_rcnn_2x', batch_size=8).peak_lr == pytest.approx(0.01)  # linear scaling
    assert load_detection_recipe('faster_rcnn_2x', epochs=12).lr_steps == [8, 11]  # the 2x points, in proportion
    shapes = load_detection_recipe('shapes')
    assert shapes.backbone_kwargs == {'channels': [16, 32, 64, 128]} and shapes.grad_clip == 10
    assert r.grad_clip is None
    assert load_detection_recipe('shapes', backbone='resnet50').backbone_kwargs == {}
    with pytest.raises(RecipeError, match='unknown backbone'):
        load_detection_recipe('shapes', backbone='resnet5')
    with pytest.raises(RecipeError, match='no such recipe'):
        load_detection_recipe('faster_rcnn_3x')


def test_schedule_warms_up_then_decays_at_the_steps():
    r = load_detection_recipe('faster_rcnn_2x', epochs=24)
    f = lr_factor(r, steps_per_epoch=100)
    assert f(0) == pytest.approx(0.001) and f(250) == pytest.approx(0.5005) and f(500) == 1.0
    assert f(1599) == 1.0 and f(1600) == pytest.approx(0.1) and f(2200) == pytest.approx(0.01)


def test_shapes_set_is_deterministic_and_valid_coco(tmp_path):
    from scnet.tasks.coco_files import load_coco

    a = make_shapes_coco(tmp_path / 'a', num_train=3, num_val=2, image_size=64, seed=5)
    b = make_shapes_coco(tmp_path / 'b', num_train=3, num_val=2, image_size=64, seed=5)
    assert a.train_ann.read_bytes() == b.train_ann.read_bytes()
    assert (a.val_images / '000001.png').read_bytes() == (b.val_images / '000001.png').read_bytes()
    coco = load_coco(a.train_ann, a.train_images, task='segm')
    anns = coco.dataset['annotations']
    assert anns and all(a['iscrowd'] == 0 and a['area'] > 0 and a['segmentation'] for a in anns)
    mask = coco.annToMask(anns[0])  # the polygon is where the shape was drawn
    x, y, w, h = anns[0]['bbox']
    assert abs(int(mask.sum()) - anns[0]['area']) < 0.25 * anns[0]['area']
    assert mask[int(y + h / 2), int(x + w / 2)] == 1


# --- many processes --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_train_and_evaluate_every_image_once(tiny, tmp_path, capsys):
    """torchrun, 2 CPU processes (gloo): a run trains; the 2-process evaluation of its checkpoint equals the
    single-process one (each image evaluated once, detections gathered)."""
    run = tmp_path / 'run'
    env = dict(os.environ, OMP_NUM_THREADS='1', TMPDIR=str(tmp_path))  # (torchrun's torchelastic_* logs)
    launch = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port', '29547',
              '-m', 'scnet', 'detect']
    train = subprocess.run([*launch, 'train', *tiny.cli_args(), *tiny_args(), '--output', str(run), '--quiet'],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    rows = read_metrics(run)
    assert json.loads((run / 'config.json').read_text())['world_size'] == 2
    assert [r['val_images'] for r in rows] == [4, 4] and [r['train_images'] for r in rows] == [8, 8]
    evaluation = subprocess.run([*launch, 'eval', '--checkpoint', str(run), '--val-ann', str(tiny.val_ann),
                                 '--val-images', str(tiny.val_images), '--format', 'json', '--workers', '0',
                                 '--quiet'], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    two = json.loads(evaluation.stdout)
    assert two['metrics'] == pytest.approx({f'bbox_{m}': rows[-1][f'bbox_{m}'] for m in METRICS})
    capsys.readouterr()
    assert main(['detect', 'eval', '--checkpoint', str(run), '--val-ann', str(tiny.val_ann), '--val-images',
                 str(tiny.val_images), '--format', 'json', '--workers', '0', '--quiet']) == 0
    one = json.loads(capsys.readouterr().out)
    assert two['images'] == one['images'] == 4
    assert two['metrics'] == pytest.approx(one['metrics'], abs=0.05)


def test_classifier_tools_name_the_detect_command_for_a_detection_checkpoint(bbox_run, tmp_path, capsys):
    """cam, eval, export and create_model refuse a detection run's weights in one line that names the command
    that runs them, instead of a list of keys that do not fit (or "its metadata names no model")."""
    weights = bbox_run / 'model.safetensors'
    backbone = read_metadata(weights)['backbone']
    said = f'is a detection checkpoint (backbone {backbone}), not a classifier: `scnet detect predict --checkpoint'
    image = tmp_path / 'photo.png'
    Image.new('RGB', (40, 30), 'gray').save(image)
    folder = write_folder(tmp_path / 'classes')
    commands = [['cam', '--models', str(bbox_run), '--images', str(image), '--output', str(tmp_path / 'cam')],
                ['eval', '--model', backbone, '--checkpoint', str(weights), '--data', str(tmp_path)],
                ['eval', '--model', backbone, '--checkpoint', str(bbox_run / 'last.pt'), '--data', str(tmp_path)],
                ['export', '--model', backbone, '--checkpoint', str(weights), '--format', 'onnx',
                 '--output', str(tmp_path / 'm.onnx')],
                ['train', '--model', backbone, '--init', str(weights), '--data', str(folder), '--batch-size', '8',
                 '--output', str(tmp_path / 'run')]]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert said in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1, (argv, err)
    with pytest.raises(scnet.CheckpointError, match='is a detection checkpoint'):
        scnet.create_model(backbone, checkpoint=str(weights))
    # nothing written: the refused train run holds only its lock, which the process keeps until it ends
    assert [p.name for p in (tmp_path / 'run').iterdir()] == ['run.lock']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['classes', 'photo.png', 'run']
