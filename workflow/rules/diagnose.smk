rule diagnose:
    input:
        model="results/{dataset}/{variant}/seed{seed}/model.pt",
        latent="results/{dataset}/{variant}/seed{seed}/latent.h5ad",
        # The counts that latent.h5ad refers to (scvae.data.runfiles).
        counts="results/{dataset}/preprocessed.h5ad",
    output:
        json="results/{dataset}/{variant}/seed{seed}/diagnostics.json",
        kl=report(
            "results/{dataset}/{variant}/seed{seed}/figures/kl_per_dim.png",
            caption="../report/kl_per_dim.rst",
            category="Diagnostics",
            subcategory="KL per dimension",
            labels={"dataset": "{dataset}", "variant": "{variant}", "seed": "{seed}"},
        ),
        sensitivity=report(
            "results/{dataset}/{variant}/seed{seed}/figures/sensitivity_vs_kl.png",
            caption="../report/sensitivity_vs_kl.rst",
            category="Diagnostics",
            subcategory="Decoder sensitivity",
            labels={"dataset": "{dataset}", "variant": "{variant}", "seed": "{seed}"},
        ),
        spectrum=report(
            "results/{dataset}/{variant}/seed{seed}/figures/jtj_spectrum.png",
            caption="../report/jtj_spectrum.rst",
            category="Diagnostics",
            subcategory="Jacobian spectrum",
            labels={"dataset": "{dataset}", "variant": "{variant}", "seed": "{seed}"},
        ),
    log:
        "logs/{dataset}/{variant}/seed{seed}/diagnose.log",
    params:
        cli=SCVAE,
        settings=diagnostics_json,
        figure_dir=subpath(output.kl, parent=True),
        # The training's device: a cuda run is diagnosed on the GPU too.
        device=lambda wc: variant_settings(wc)["device"],
    threads: config["threads"]
    group:
        small_job_group
    resources:
        mem_mb=mem_mb_from_input(factor=4, floor=2000, on_disk_factor=1),
        runtime=diagnose_runtime,
        gpu=gpu_request,
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} diagnose --model {input.model} --input {input.latent} "
        "--output {output.json} --figure-dir {params.figure_dir} "
        "--params {params.settings:q} --device {params.device} --threads {threads}"
