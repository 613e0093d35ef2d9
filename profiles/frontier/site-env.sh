# Sourced before `srun seqvit train` on Frontier (cluster.env_script): modules and the
# communication settings of the OLCF PyTorch/RCCL guidance. Adjust module versions to the
# current programming environment (`module avail rocm`).
module load PrgEnv-gnu
module load rocm
module load craype-accel-amd-gfx90a
module load miniforge3

# RCCL over the Slingshot network: libfabric (CXI provider) through the aws-ofi-rccl plugin,
# which must be on LD_LIBRARY_PATH (set SEQVIT_AWS_OFI_RCCL to its lib folder).
if [[ -n ${SEQVIT_AWS_OFI_RCCL:-} ]]; then
  export LD_LIBRARY_PATH="$SEQVIT_AWS_OFI_RCCL:$LD_LIBRARY_PATH"
fi
export NCCL_NET_GDR_LEVEL=3          # GPU-direct RDMA between GCDs and the NICs
export NCCL_CROSS_NIC=1
export NCCL_SOCKET_IFNAME=hsn0       # the Slingshot interfaces
export FI_CXI_ATS=0                  # avoids hangs with the CXI provider
export FI_MR_CACHE_MONITOR=userfaultfd

# MIOpen keeps a per-user kernel database; a job-local copy avoids lock contention on the
# shared home file system.
export MIOPEN_USER_DB_PATH="/tmp/miopen-${USER}-${SLURM_JOB_ID:-0}"
export MIOPEN_CUSTOM_CACHE_DIR="$MIOPEN_USER_DB_PATH"
mkdir -p "$MIOPEN_USER_DB_PATH"

# torch.distributed rendezvous: the first node of the allocation
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-7}
