"""The residual model starts as the heuristic it must beat, reads the request, and personalises on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from model.features.encoding import EXCLUDED_GENRES, FEATURE_DIM, NAMED_GENRES, RECENT, encode_events

from model.features.examples import Examples, build_examples
from model.features.heuristic_prior import prior_logits
from model.log.events import Event
from model.log.vocab import GENRE_INDEX
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.personalise import PersonaliseConfig, fit_personal_bias, personalised
from model.network.training import LocalTrainConfig, evaluate, train_local
from simulations.population.population import Population, PopulationConfig
from simulations.yardstick import score_rules

RESIDUAL = ModelConfig(bidirectional=False, hidden_size=16, num_layers=1, dropout=0.0, head_dropout=0.0,
                       style_embedding_dim=8, residual=True)


@pytest.fixture(scope="module")
def logs():
    population = Population(PopulationConfig(num_users=40, days=14, seed=5))
    return population, [population.user(i).events() for i in range(40)]


def _examples(logs, window: int = 32) -> Examples:
    return Examples.concat([build_examples(events, window) for events in logs[1]], window)


def test_untrained_residual_model_predicts_exactly_the_heuristic_prior(logs):
    examples = _examples(logs)
    torch.manual_seed(0)
    model = PreferenceLSTM(RESIDUAL).eval()
    last_rows = examples.x[torch.arange(len(examples)), examples.lengths - 1]
    with torch.no_grad():
        torch.testing.assert_close(model(examples.x, examples.lengths), prior_logits(last_rows))


def test_prior_argmax_is_the_named_genre_else_the_recent_favourite(logs):
    population, events = logs
    examples = _examples(logs)
    last_rows = examples.x[torch.arange(len(examples)), examples.lengths - 1]
    # window 10**6: the rule reads every earlier keep, as the decayed counts do
    points = score_rules(population, range(40), window=10**6, points_per_user=10**6, global_mode=0)
    named = last_rows[:, NAMED_GENRES].sum(-1) > 0
    prior_choice = prior_logits(last_rows).argmax(-1).numpy()
    rule = points.predictions["named_else_recent"]
    assert named.any() and (~named).any()
    np.testing.assert_array_equal(prior_choice[named.numpy()], rule[named.numpy()])
    # without a named genre the decayed counts favour recent keeps, so they agree with the window count mostly
    assert (prior_choice[~named.numpy()] == rule[~named.numpy()]).mean() > 0.7


def test_request_features_come_from_the_prompt_and_counts_from_kept_segments():
    t0 = 1_790_000_000.0
    events = [
        Event(t0, 0, "segment_kept", genre="jazz", bpm=90.0, instruments=("piano",)),
        Event(t0 + 60, 0, "segment_kept", genre="rock", bpm=130.0, instruments=("drums",)),
        Event(t0 + 120, 0, "generation_requested", prompt="some hip-hop, no jazz"),
    ]
    rows = encode_events(events)
    request = rows[-1]
    assert request[NAMED_GENRES][GENRE_INDEX["hiphop"]] == 1.0 and request[NAMED_GENRES].sum() == 1.0
    assert request[EXCLUDED_GENRES][GENRE_INDEX["jazz"]] == 1.0
    assert request[RECENT][GENRE_INDEX["rock"]] == pytest.approx(1.0)
    assert request[RECENT][GENRE_INDEX["jazz"]] == pytest.approx(0.85)
    assert rows[0][NAMED_GENRES].sum() == 0.0  # only a request carries request features
    logits = prior_logits(torch.from_numpy(request))
    assert int(logits.argmax()) == GENRE_INDEX["hiphop"]
    assert float(logits[GENRE_INDEX["jazz"]]) < float(logits[GENRE_INDEX["pop"]])  # ruled out: below never kept


def test_residual_model_improves_on_the_heuristic_for_users_it_never_saw(logs):
    """Trained on 30 synthetic users, the model beats the prior it starts from on 10 others (NLL)."""
    train = Examples.concat([build_examples(events, 32) for events in logs[1][:30]], 32)
    test = Examples.concat([build_examples(events, 32) for events in logs[1][30:]], 32)
    torch.manual_seed(0)
    model = PreferenceLSTM(RESIDUAL)
    before = evaluate(model, test)
    train_local(model, train, LocalTrainConfig(epochs=3, batch_size=32, lr=3e-3), generator=torch.Generator().manual_seed(0))
    after = evaluate(model, test)
    assert after.nll < before.nll - 0.05


def test_personal_bias_moves_towards_the_users_own_genre_and_stays_on_the_device():
    torch.manual_seed(0)
    model = PreferenceLSTM(RESIDUAL).eval()
    n = 40
    x = torch.zeros(n, 1, FEATURE_DIM)
    examples = Examples(x, torch.ones(n, dtype=torch.int64), torch.full((n,), GENRE_INDEX["folk"]),
                        torch.arange(n, dtype=torch.float64))
    bias = fit_personal_bias(model, examples, PersonaliseConfig(steps=100))
    assert int(bias.argmax()) == GENRE_INDEX["folk"]
    personal = personalised(model, bias)
    assert torch.equal(model.head.bias, torch.zeros(8))  # the global model is unchanged
    with torch.no_grad():
        assert int(personal(x[:1], torch.ones(1, dtype=torch.int64)).argmax()) == GENRE_INDEX["folk"]


def test_personal_bias_is_the_offset_torch_optim_sgd_reaches():
    """The fit writes SGD's step out (no torch.optim import on the device); its answer is SGD's, bit for bit."""
    torch.manual_seed(1)
    model = PreferenceLSTM(RESIDUAL).eval()
    n, config = 40, PersonaliseConfig(steps=30, holdout_fraction=0.0)
    examples = Examples(torch.randn(n, 3, FEATURE_DIM), torch.full((n,), 3, dtype=torch.int64),
                        torch.randint(0, 8, (n,)), torch.arange(n, dtype=torch.float64))
    with torch.no_grad():
        logits = model(examples.x, examples.lengths)
    bias = torch.zeros(8, requires_grad=True)
    optimizer = torch.optim.SGD([bias], lr=config.lr)
    for _ in range(config.steps):
        optimizer.zero_grad()
        (F.cross_entropy(logits + bias, examples.targets) + config.l2 * bias.square().sum()).backward()
        optimizer.step()
    assert torch.equal(fit_personal_bias(model, examples, config), bias.detach())


def test_personal_bias_is_dropped_when_the_users_latest_points_disagree():
    torch.manual_seed(0)
    model = PreferenceLSTM(RESIDUAL).eval()
    n = 40
    targets = torch.full((n,), GENRE_INDEX["folk"])
    targets[-10:] = GENRE_INDEX["rock"]  # tastes switched: the fit on older points would hurt the latest ones
    examples = Examples(torch.zeros(n, 1, FEATURE_DIM), torch.ones(n, dtype=torch.int64), targets,
                        torch.arange(n, dtype=torch.float64))
    assert torch.equal(fit_personal_bias(model, examples), torch.zeros(8))


def test_residual_models_per_sample_gradients_match_one_example_at_a_time(logs):
    """DP-SGD's per-sample gradients of the residual model (head over [state, request row]) equal a plain loop."""
    examples = _examples(logs).subset(slice(0, 6))
    torch.manual_seed(1)
    model = PreferenceLSTM(RESIDUAL).double()
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.3)  # a zero head would leave the LSTM without gradient
    x, lengths, targets = examples.x.double(), examples.lengths, examples.targets
    model.per_sample_grads = True
    torch.nn.functional.cross_entropy(model(x, lengths), targets, reduction="sum").backward()
    model.per_sample_grads = False
    per_sample = {name: p.grad_sample.clone() for name, p in model.named_parameters()}
    for n in range(len(examples)):
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.grad_sample = None
        length = int(lengths[n])
        torch.nn.functional.cross_entropy(model(x[n:n + 1, :length], lengths[n:n + 1]), targets[n:n + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][n], p.grad, rtol=1e-9, atol=1e-10)
