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
        mem_mb=mem_mb_from_input(factor=4, floor=2000, on_disk_factor=0.5),
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
        # --method and its options, from the run name (scvae.workflow_runs).
        args=lambda wc: " ".join(baseline_arguments(wc.baseline, config["baselines"])),
    threads: config["threads"]
    group:
        small_job_group
    resources:
        # On disk: the PCA reads the counts in chunks, scVI loads them (about 3x their size).
        mem_mb=mem_mb_from_input(factor=6, floor=2000, on_disk_factor=3),
        runtime=baseline_runtime,
    conda:
        "../../envs/scvae.yaml"
    shell:
        "{params.cli} --log {log} baseline --input {input} --output {output.latent} "
        "{params.args} --seed {wildcards.seed} --threads {threads}"
