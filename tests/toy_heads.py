"""Heads for tests of sampling loops: every head a registered sampler may ask for."""

def with_every_head(model, max_steps: int = 200):
    """``model`` with every head a registered sampler may ask for, each the model's own network: the students
    ("kd", "cd", "pd:N" for N < max_steps) and GENIE's derivative head (the network's output as its derivative).
    For tests of sampling loops (devices, dtypes, schedules) that do not care what the heads learned."""
    plain = model.replace(heads={}, derivative_fn=None)
    genie = plain.replace(prediction="eps", derivative_fn=lambda x, t: (model.fn(x, t), 0.1 * model.fn(x, t)))
    heads = {"kd": plain, "cd": plain, "genie": genie, **{f"pd:{n}": plain for n in range(1, max_steps)}}
    return model.replace(heads=heads)
