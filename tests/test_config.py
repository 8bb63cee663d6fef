import pytest

from config import load_config, parse_override, read_config_file
from engine.run_config import load_run_config
from utils import UsageError

CONFIGS = ['configs/a2d_sentences.yaml', 'configs/jhmdb_sentences.yaml', 'configs/refer_youtube_vos.yaml']


@pytest.mark.parametrize('path', CONFIGS)
def test_shipped_configs_load_with_paper_values(path):
    config = load_config(path)
    assert config.lr == 1e-4 and config.lr_backbone == 1e-5 and config.text_encoder_lr == 5e-5
    assert (config.d_model, config.nheads, config.num_queries, config.mask_kernels_dim) == (256, 8, 50, 8)
    assert (config.set_cost_is_referred, config.set_cost_dice) == (2, 5)
    assert (config.is_referred_loss_coef, config.sigmoid_focal_loss_coef, config.dice_loss_coef) == (2, 2, 5)
    assert config.eos_coef == 0.1 and config.clip_max_norm == 0.1 and config.seed == 42


def test_schedules_differ_per_dataset():
    assert load_config(CONFIGS[0]).lr_drop == [50] and load_config(CONFIGS[0]).epochs == 70
    assert load_config(CONFIGS[2]).lr_drop == [1] and load_config(CONFIGS[2]).epochs == 30  # tests/test_trainer.py


def test_merge_order_yaml_then_flags_then_set():
    config = load_config(CONFIGS[0], ['window_size=12', 'lr=2e-4'], window_size=10, batch_size=3)
    assert config.window_size == 12 and config.batch_size == 3 and config.lr == 2e-4


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('learning_rate:\n  desc: typo\n  value: 0.1\n')
    with pytest.raises(KeyError, match='learning_rate'):
        read_config_file(path)


def test_wrong_type_is_rejected_with_its_name(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('epochs:\n  desc: x\n  value: many\n')
    with pytest.raises(TypeError, match='epochs'):
        read_config_file(path)
    with pytest.raises(TypeError, match='aux_loss'):
        parse_override('aux_loss=3')
    with pytest.raises(KeyError, match='not_a_key'):
        parse_override('not_a_key=3')


def test_int_accepted_for_float_and_strings_stay_strings():
    assert parse_override('lr=1') == ('lr', 1.0)
    assert parse_override('text_encoder_type=123') == ('text_encoder_type', '123')
    assert parse_override('checkpoint_path=null') == ('checkpoint_path', None)


def test_an_unknown_dataset_name_is_refused_by_the_registry_when_the_run_config_is_built():
    with pytest.raises(UsageError, match="dataset_name: 'coco' is not one of 'a2d_sentences'"):
        load_run_config(CONFIGS[0], ['dataset_name=coco'], running_mode='train')
