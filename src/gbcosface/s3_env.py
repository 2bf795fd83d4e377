"""The project's own names for the dataset's S3 credentials and endpoint, and why they are not AWS_*.

Why not the standard AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL: a KFP step's
container is shared with KFP's launcher, which uploads and downloads the step's artifacts under the
pipeline root with a client built from the same variables:
- kubeflow/pipelines@2.17.0:backend/src/v2/driver/driver.go:320 replaces the step's command with
  `/kfp-launcher/launch ...`, which runs the component as its child (same container, same env,
  including the Secret-as-env variables of driver/k8s.go:347); likewise driver.go:425 at 2.4.1 and
  driver.go:475 at 2.5.0.
- kubeflow/pipelines@2.17.0:backend/src/v2/objectstore/object_store.go:93-96 and :339: for an
  s3:// or minio:// pipeline root with no provider config (and, through createS3BucketSession, with
  `fromEnv: true`) the launcher's client is `awsconfig.LoadDefaultConfig` with no credentials of its
  own, i.e. aws-sdk-go-v2's default chain, which reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
  AWS_SESSION_TOKEN, AWS_REGION, AWS_PROFILE and AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3
  (aws/aws-sdk-go-v2 config/env_config.go; the endpoint is taken from the environment where the
  provider config names none).
- kubeflow/pipelines@2.4.1 and @2.5.0: backend/src/v2/objectstore/object_store.go:86 (:85) opens
  such a root with `blob.OpenBucket(ctx, "s3://...")`; gocloud.dev v0.40.0 (their go.mod) then
  uses AWS SDK v2's `LoadDefaultConfig` by default (google/go-cloud@v0.40.0:aws/aws.go, `UseV2`),
  the same chain.
So a Secret mapped to AWS_* for the step would make KFP write the run's artifacts with the DATASET's
credentials to the DATASET's endpoint (or fail). With these names the launcher never sees them;
`gbcosface.storage.client` reads them explicitly and falls back to boto3's standard chain (IRSA
web identity, instance roles, AWS_* variables, profiles) when they are unset. The training pods use
the same names, so one Secret serves steps and pods.

No boto3 here: the pipeline compiler and the job renderers import these names.
"""

from __future__ import annotations

ACCESS_KEY_ID = "GBCOSFACE_S3_ACCESS_KEY_ID"
SECRET_ACCESS_KEY = "GBCOSFACE_S3_SECRET_ACCESS_KEY"
SESSION_TOKEN = "GBCOSFACE_S3_SESSION_TOKEN"
ENDPOINT_URL = "GBCOSFACE_S3_ENDPOINT_URL"
REGION = "GBCOSFACE_S3_REGION"

#: Every variable `gbcosface.storage.client` reads before the standard chain.
ALL = (ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN, ENDPOINT_URL, REGION)
#: The keys of the S3 Secret (k8s/base/s3-secret.template.yaml). Each becomes the environment variable
#: of the same name in the pipeline steps and the training pods, as an optional reference: a cluster
#: with IAM roles for service accounts leaves them out.
SECRET_KEYS = (ACCESS_KEY_ID, SECRET_ACCESS_KEY, ENDPOINT_URL)
#: What the KFP launcher's default AWS chain reads (see above): never set from the dataset's Secret.
LAUNCHER_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY",
                    "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                    "AWS_DEFAULT_REGION", "AWS_PROFILE")
