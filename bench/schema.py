"""The columns of a results row, their types, and the statuses a cell can end in (documented in the README)."""
from __future__ import annotations

import pandas as pd

STATUSES = ("ok", "diverged", "unsupported", "error")
RETRY_STATUSES = ("error",)  # resume recomputes these; every other status is a final outcome

# column -> pandas dtype. Metrics are float (NaN where a metric does not apply or the cell failed).
COLUMNS: dict[str, str] = {
    "cell_id": "string",
    "checkpoint": "string",
    "sampler": "string",
    "sampler_config": "string",      # JSON of every option, sorted keys
    "grid": "string",
    "nfe": "Int64",                  # requested budget; <NA> for adaptive samplers
    "nfe_counted": "float64",        # model calls per batch, counted by the model boundary
    "seed": "int64",
    "n_samples": "int64",
    "state_dtype": "string",         # dtype of the solver state between steps (float64 / float32)
    "net_dtype": "string",           # dtype the network computes in (its weights', or the autocast dtype)
    "guidance": "float64",           # classifier-free guidance scale; NaN: unconditional sampling
    "network_passes": "float64",     # passes through the network per sample and batch: nfe_counted, 2x per guided NFE
    "batch_size": "int64",
    "status": "string",
    "error": "string",
    "wall_clock_s": "float64",
    "s_per_sample": "float64",
    "solver_error_mean": "float64",  # L2 distance to the exact / reference ODE solution from the same x_T
    "solver_error_median": "float64",
    "reference_exact": "boolean",
    "reference_n": "Int64",          # samples the solver error is measured on (the first ones of the cell)
    "solver_error_se": "float64",    # standard error of solver_error_mean over those samples
    "reference_nfe": "Int64",        # NFE per sample of the reference solve (<NA>: exact); the same for a seed's rows
    "reference_s": "float64",        # seconds the seed's reference solution took to compute (once per seed, cached)
    "reference_error": "float64",    # the reference's own error: L2 to a solve at 2x its NFE (<NA>: exact)
    "at_reference_floor": "boolean", # solver_error_mean within 10x reference_error: not resolved from the reference
    "frechet": "float64",            # Frechet distance of sample moments to the true data moments
    "loglik": "float64",             # mean log p_0(sample) under the true density
    "fid": "float64",
    "kid": "float64",
    "kid_std": "float64",
    "fid_ref": "string",             # a --fid-ref set's content hash (fidref-...); <NA>: the checkpoint's own reference
    "fid_ref_n": "Int64",            # its images (<NA>: precomputed statistics that do not say)
    "fid_extractor": "string",       # the feature extractor FID and KID used
    "fid_inf": "float64",            # FID-infinity (Chong & Forsyth 2020): FID fitted linearly in 1/N, read at 1/N = 0
    "fid_inf_slope": "float64",      # that line's slope: fid - fid_inf is about fid_inf_slope / feat_n
    "precision": "float64",          # Kynkaanniemi et al. 2019, k-NN balls with k = pr_k, in FID's feature space
    "recall": "float64",
    "density": "float64",            # Naeem et al. 2020, k-NN balls with k = dc_k
    "coverage": "float64",
    "pr_k": "Int64",                 # the k of precision / recall
    "dc_k": "Int64",                 # the k of density / coverage
    "feat_n": "Int64",               # generated samples whose features KID, PRDC and fid_inf use (the first 10,000)
    "feat_ref_n": "Int64",           # reference images whose features KID and PRDC use (<NA>: statistics, no features)
    "nll_bpd": "float64",            # nll:* cells: mean NLL estimate of held-out data, bits/dim
    "nll_bpd_se": "float64",         # its standard error over data (probe and dequantisation noise included)
    "nll_n": "Int64",                # held-out data points it averages
    "nll_exact_bpd": "float64",      # the exact NLL of the same data where the density is known (mixtures)
    "ode_prior_bpd": "float64",      # PF-ODE terms: -log N(x_T; 0, I), -int div v dt, truncation at t_eps
    "ode_flow_bpd": "float64",
    "ode_truncation_bpd": "float64",
    "vlb_recon_bpd": "float64",      # VDM bound terms: reconstruction, prior KL, diffusion
    "vlb_prior_bpd": "float64",
    "vlb_diffusion_bpd": "float64",
    "accuracy": "float64",           # guided cells: share of samples the classifier assigns their requested label
    "out_of_range": "float64",       # share of samples with a coordinate beyond the data range (+- tolerance), unclipped
    "max_abs": "float64",
    "run_id": "string",
    "created_at": "string",
    "git_commit": "string",
    "versions": "string",
    "device": "string",              # where the cell ran, e.g. "cuda:0 (NVIDIA H100)" or "cpu (x86_64)"
    "compiled": "boolean",           # network wrapped in torch.compile
    "threads": "int64",
    "world_size": "int64",           # processes that shared the sample generation (torchrun)
}

# metric -> True if lower is better (used by report's bold and check's direction).
METRICS: dict[str, bool] = {
    "solver_error_median": True,
    "solver_error_mean": True,
    "frechet": True,
    "loglik": False,
    "fid": True,
    "kid": True,
    "fid_inf": True,
    "precision": False,
    "recall": False,
    "density": False,
    "coverage": False,
    "nll_bpd": True,
    "accuracy": False,
    "out_of_range": True,
    "wall_clock_s": True,
}

KEY_COLUMNS = ("checkpoint", "sampler", "sampler_config", "nfe", "seed", "n_samples", "state_dtype", "net_dtype",
               "guidance", "fid_ref")
REQUIRED_COLUMNS = ("cell_id", "checkpoint", "sampler", "sampler_config", "nfe", "seed", "n_samples", "status")


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Give a frame the schema's columns, in order, with the schema's dtypes; extra columns follow, untouched."""
    df = df.copy()
    for col, dtype in COLUMNS.items():
        if col not in df:
            df[col] = None  # becomes NaN / <NA>; the int64 columns are required
        df[col] = df[col].astype(dtype)
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[[*COLUMNS, *extra]].reset_index(drop=True)
