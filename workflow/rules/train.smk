rule train:
    input:
        "results/{dataset}/preprocessed.h5ad",
    output:
        model="results/{dataset}/{variant}/seed{seed}/model.pt",
        history="results/{dataset}/{variant}/seed{seed}/history.tsv",
        latent="results/{dataset}/{variant}/seed{seed}/latent.h5ad",
    log:
        "logs/{dataset}/{variant}/seed{seed}/train.log",
    params:
        cli=SCVAE,
        settings=variant_json,
        # Outside the declared outputs: Snakemake deletes those when a job fails, and a
        # rerun must find the checkpoint to resume from.
        checkpoints="checkpoints/{dataset}/{variant}/seed{seed}",
    threads: config["threads"]
    resources:
        mem_mb=mem_mb_from_input(factor=4, floor=2000),
        runtime=train_runtime,
        gpu=gpu_request,
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} train --input {input} --model {output.model} "
        "--history {output.history} --latent {output.latent} "
        "--checkpoint-dir {params.checkpoints} --settings {params.settings:q} --threads {threads}"


rule baseline:
    input:
        "results/{dataset}/preprocessed.h5ad",
    output:
        latent="results/{dataset}/{baseline}/seed{seed}/latent.h5ad",
    log:
        "logs/{dataset}/{baseline}/seed{seed}/baseline.log",
    params:
        cli=SCVAE,
        method=lambda wc: "scvi" if wc.baseline == "scvi" else "pca",
        n_components=lambda wc: (
            int(wc.baseline[3:])
            if wc.baseline.startswith("pca")
            else config["defaults"]["n_latent"]
        ),
        pca_args=lambda wc: (
            f"--target-sum {config['baselines']['pca_target_sum']}"
            if wc.baseline.startswith("pca")
            else ""
        ),
    threads: config["threads"]
    group:
        small_job_group
    resources:
        mem_mb=mem_mb_from_input(factor=6, floor=2000),
        runtime=runtime_from_input(minutes=15, per_gb=30),
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} baseline --input {input} --output {output.latent} "
        "--method {params.method} --n-components {params.n_components} --seed {wildcards.seed} "
        "{params.pca_args}"
