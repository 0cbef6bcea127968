"""The learned soup's gradient path: Adam on the mixing logits, on the dev log-likelihood of the answers.

The soup's parameters are theta = sum_i w_i theta_i (per layer group, each group its own w), with
w = softmax(logits) so the weights never leave the simplex. The objective is the mean, over the dev
documents of the search part, of the log-probability per token of each document's reference answer
(evaluators.reference_pairs) through the merged model; documents are weighted as the trials' dev
objective weighs them (each category by its weight, each task in it by its weight, each document of a
task equally), and per token so that long answers do not outweigh short ones.

One step is one pass over every document: the merged parameters are built once as leaves, each batch's
loss is backpropagated into them (activations freed batch by batch), and the chain rule gives the
weights' gradient, dL/dw_{g,i} = sum over the group's parameters p of <dL/dtheta_p, theta_{i,p}>; the
candidates' tensors stay frozen. Memory: the resident candidates, one merged set of parameters and its
gradient, and one batch's activations. The pass is deterministic (every document, in a fixed order),
so a path depends only on the candidates, the documents and the settings.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from optimizer.learned import SIMPLEX, EarlyStop, LearnedPath, LearnedSettings
from optimizer.space import SearchSpace
from soce.errors import SearchError
from soce.merging.layerwise import tensor_group
from soce.schemas.suite import DevPart, SuiteSpec

if TYPE_CHECKING:
    import torch

    from evaluators.reference_pairs import ReferencePair
    from workers.resident import ResidentSoup

log = logging.getLogger(__name__)


def document_weights(suite: SuiteSpec, pairs: list[ReferencePair]) -> list[float]:
    """Each document's share of the objective (summing to 1), as the trials' dev objective weighs it."""
    per_task: dict[str, int] = {}
    for p in pairs:
        per_task[p.task] = per_task.get(p.task, 0) + 1
    task_share: dict[str, float] = {}
    categories = [c for c in suite.categories if any(t.name in per_task for t in c.tasks)]
    cat_total = sum(c.weight for c in categories)
    for c in categories:
        present = [t for t in c.tasks if t.name in per_task]
        total = sum(t.weight for t in present)
        for t in present:
            task_share[t.name] = task_share.get(t.name, 0.0) + c.weight / cat_total * t.weight / total
    weights = [task_share[p.task] / per_task[p.task] for p in pairs]
    total = sum(weights)
    return [w / total for w in weights]


class _Objective:
    """The dev log-likelihood of the reference answers through the soup of `experts` with weights w."""

    def __init__(self, resident: ResidentSoup, space: SearchSpace, settings: LearnedSettings, part: Any):
        import torch

        from evaluators.batched_lm import BatchedLM
        from evaluators.reference_pairs import reference_pairs
        from evaluators.request_plans import score_plan

        self.model = resident.model
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.experts = [resident.tensors[e] for e in space.experts]
        self.k = space.k
        pairs = reference_pairs(resident.evaluator, resident.suite, "dev", part, tokenizer=resident.tokenizer)
        if not pairs:
            raise SearchError("the learned soup needs dev documents with reference answers; none has one")
        # the tokens, batches and gather indices of BatchedLM's loglikelihood, for these requests
        lm = BatchedLM(self.model, resident.tokenizer, batch_size=settings.batch_size)
        with lm.encoder.lock:
            encoded = lm.encoder.encode_pairs([(p.context, p.continuation) for p in pairs])
        self.plan = score_plan(encoded, lm.plan_settings)
        self.documents = len(pairs)
        share = document_weights(resident.suite, pairs)
        # per scored token: its document's share over the answer's length (a per-token mean per document)
        per_request = torch.tensor(
            [s / len(cont) for s, (_, cont) in zip(share, encoded, strict=True)],
            dtype=torch.float32,
            device=self.device,
        )
        self.token_weights = [per_request[chunk.requests] for chunk in self.plan.chunks]
        # the parameters to merge (tied weights once, as merge_into) and each one's layer group
        groups = list(space.groups) if space.name == "layerwise" else [SIMPLEX]
        self.params = list(self.model.named_parameters())
        self.group_of: dict[str, int | None] = {}
        for name, _ in self.params:
            if space.name != "layerwise":
                self.group_of[name] = 0
            else:  # a tensor outside every group keeps uniform weights, as the layerwise merge gives it
                g = tensor_group(name, resident.num_layers, resident.groups)
                self.group_of[name] = groups.index(g) if g in groups else None
            missing = [i for i, e in enumerate(self.experts) if name not in e]
            if missing:
                who = space.experts[missing[0]]
                raise SearchError(f"candidate {who} has no tensor {name!r} that the model needs")
        self.groups = groups

    def merged(self, w: torch.Tensor, grad: bool) -> dict[str, torch.Tensor]:
        """theta_p = sum_i w_{g(p),i} theta_{i,p} for every parameter, accumulated in float32, as leaves."""
        import torch

        uniform = torch.full((self.k,), 1.0 / self.k, dtype=torch.float32, device=self.device)
        out = {}
        with torch.no_grad():
            for name, p in self.params:
                g = self.group_of[name]
                c = w[g] if g is not None else uniform
                acc = self.experts[0][name].float() * c[0]
                for i in range(1, self.k):
                    acc += self.experts[i][name].float() * c[i]
                out[name] = acc.to(p.dtype).requires_grad_(grad)
        return out

    def __call__(self, w: torch.Tensor, *, grad: bool) -> tuple[float, torch.Tensor | None]:
        """The objective at weights w [G, k] and, if `grad`, its gradient with respect to w."""
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        params = self.merged(w.to(self.device, torch.float32), grad)
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for chunk, weights in zip(self.plan.chunks, self.token_weights, strict=True):
            at = 0
            for batch in chunk.batches:
                n = len(batch.rows)
                kwargs: dict[str, Any] = {"input_ids": batch.inputs, "use_cache": False}
                if batch.keep:
                    kwargs["logits_to_keep"] = batch.keep
                with torch.set_grad_enabled(grad):
                    logits = functional_call(self.model, params, (), kwargs).logits  # [B, T, V]
                    picked = logits[batch.rows, batch.positions].float()  # [N, V]
                    lp = F.log_softmax(picked, dim=-1).gather(1, chunk.targets[at : at + n, None]).squeeze(1)
                    value = (lp * weights[at : at + n]).sum()
                if grad:
                    (-value).backward()  # into the merged parameters' .grad, summed over batches
                total += value.detach()
                at += n
        if not grad:
            return float(total), None
        # chain rule to the weights: dL/dw_{g,i} = sum_p <dL/dtheta_p, theta_{i,p}>
        dw = torch.zeros((len(self.groups), self.k), dtype=torch.float64)
        for name, p in params.items():
            g = self.group_of[name]
            if g is None or p.grad is None:
                continue
            flat = p.grad.float().flatten()
            for i, e in enumerate(self.experts):
                dw[g, i] += float(torch.dot(flat, e[name].float().flatten()))
        return float(total), dw


def learn_weights(
    resident: ResidentSoup, space: SearchSpace, settings: LearnedSettings, *, part: DevPart | None = None
) -> LearnedPath:
    """The learned soup's path from uniform weights: the weights and dev log-likelihood after each step.

    The caller holds the resident model (ResidentSoup.learned_path): the passes swap its parameters.
    """
    import torch

    started = time.perf_counter()
    objective = _Objective(resident, space, settings, part)
    groups = objective.groups
    logits = torch.zeros((len(groups), space.k), dtype=torch.float64, requires_grad=True)  # uniform
    adam = torch.optim.Adam([logits], lr=settings.lr)
    stop = EarlyStop(settings.patience, settings.min_delta, settings.decay)
    path: list[dict[str, list[float]]] = []
    values: list[float] = []
    stopped = "steps"
    best: tuple[torch.Tensor, torch.Tensor | None] = (logits.detach().clone(), None)
    for step in range(settings.steps + 1):
        w = torch.softmax(logits, dim=-1)  # [G, k] on the simplex by construction
        last = step == settings.steps or space.k == 1
        value, dw = objective(w.detach(), grad=not last)
        path.append({g: [float(x) for x in w[i].detach()] for i, g in enumerate(groups)})
        values.append(value)
        log.debug("learned soup step %d: log-likelihood %.5f", step, value)
        if stop.update(step, value):
            stopped = "no improvement"
            break
        if last:
            break
        if stop.best_step == step:  # the best so far: go on from here
            best = (logits.detach().clone(), dw)
        else:  # past the optimum: back to the best weights, a smaller step, Adam's momentum dropped
            with torch.no_grad():
                logits.copy_(best[0])
            dw = best[1]
            adam = torch.optim.Adam([logits], lr=settings.lr * stop.lr_scale)
            w = torch.softmax(logits, dim=-1)
        adam.zero_grad()
        w.backward(dw)  # dL/dlogits through the softmax; L = -objective
        adam.step()
    seconds = time.perf_counter() - started
    log.info(
        "learned soup: %d steps (%s), dev log-likelihood %.4f -> %.4f at step %d, %.1f s",
        len(values) - 1,
        stopped,
        values[0],
        values[stop.best_step],
        stop.best_step,
        seconds,
    )
    return LearnedPath(
        experts=space.experts,
        groups=tuple(space.groups) if space.name == "layerwise" else (),
        weights=path,
        loglik=values,
        best_step=stop.best_step,
        stopped=stopped,
        seconds=seconds,
        documents=objective.documents,
    )
