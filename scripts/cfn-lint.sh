#!/usr/bin/env bash
# Synthesises the CDK app in each source variant (offline: no AWS credentials, no Docker) and runs cfn-lint on the
# templates. cfn-lint is pip-installed, pinned, into .services/cfn-lint (reused when present).
# Usage: scripts/cfn-lint.sh            (CI calls it as is; exit status is cfn-lint's / synth's)
set -euo pipefail
cd "$(dirname "$0")/.."

CFN_LINT_VERSION=1.58.0
VENV=.services/cfn-lint
if [[ ! -x "$VENV/bin/cfn-lint" ]] || [[ "$("$VENV/bin/cfn-lint" --version 2>/dev/null)" != *"$CFN_LINT_VERSION"* ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION"
fi

# Synth must not depend on Docker: any call to it fails the script.
FAKE_BIN=$(mktemp -d)
trap 'rm -rf "$FAKE_BIN"' EXIT
printf '#!/bin/sh\necho "docker was called during synth: $*" >&2\nexit 97\n' > "$FAKE_BIN/docker"
chmod +x "$FAKE_BIN/docker"
export CDK_DOCKER="$FAKE_BIN/docker" PATH="$FAKE_BIN:$PATH"
# No credentials may be needed either.
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

MSK=arn:aws:kafka:eu-west-1:111122223333:cluster/crawl/5f2c1d7e-aaaa-bbbb-cccc-0123456789ab-3
SHA=$(printf 'ab%.0s' $(seq 32))
VPC="-c vpcId=vpc-0123456789abcdef0 -c subnetIds=subnet-0aaaaaaaaaaaaaaa1,subnet-0aaaaaaaaaaaaaaa2 -c availabilityZones=eu-west-1a,eu-west-1b"
KEY=arn:aws:kms:eu-west-1:111122223333:key
COMMON=(-c auditTopic=mlmf.audit -c modelBucket=models -c modelKey=mlm/model.tar -c "modelSha256=$SHA")
declare -A VARIANTS=(
  [msk-sqs]="-c kafka=msk-iam -c mskClusterArn=$MSK -c bootstrapServers=b-1.crawl:9098,b-2.crawl:9098 -c sourceTopic=crawl.pairs -c sqs=create -c acceptedTopic=mlmf.accepted -c dlqTopic=mlmf.dlq -c alarmEmail=ops@example.com -c brokersAdmitVpc=true"
  [msk]="-c kafka=msk-iam -c mskClusterArn=$MSK -c bootstrapServers=b-1.crawl:9098 -c sourceTopic=crawl.pairs -c spot=true -c brokersAdmitVpc=true"
  [self-managed]="-c kafka=self-managed -c bootstrapServers=kafka-1.internal:9096 -c scramSecretArn=arn:aws:secretsmanager:eu-west-1:111122223333:secret:kafka-AbCdEf -c sourceTopic=crawl.pairs -c minTasks=1 -c vpcId=vpc-0123456789abcdef0 -c subnetIds=subnet-0aaaaaaaaaaaaaaa1,subnet-0aaaaaaaaaaaaaaa2 -c availabilityZones=eu-west-1a,eu-west-1b -c kafkaSecurityGroupId=sg-0123456789abcdef0"
  [sqs-imported]="-c kafka=msk-iam -c mskClusterArn=$MSK -c bootstrapServers=b-1.crawl:9098 -c sqsQueueArn=arn:aws:sqs:eu-west-1:111122223333:crawler-pairs -c curatedBucket=data-lake -c provisionTopics=false -c imageUri=111122223333.dkr.ecr.eu-west-1.amazonaws.com/mlm-filter:1 -c brokersAdmitVpc=true"
  [byo-keys]="-c kafka=msk-iam -c mskClusterArn=$MSK -c bootstrapServers=b-1.crawl:9098,b-2.crawl:9098 -c sourceTopic=crawl.pairs $VPC -c kafkaSecurityGroupId=sg-0123456789abcdef0 -c sqsQueueArn=arn:aws:sqs:eu-west-1:111122223333:crawler-pairs -c sqsKmsKeyArn=$KEY/q -c curatedBucket=data-lake -c curatedKmsKeyArn=$KEY/c -c modelKmsKeyArn=$KEY/m"
  [backfill]="-c kafka=msk-iam -c mskClusterArn=$MSK -c bootstrapServers=b-1.crawl:9098 -c sqs=create -c sqsMessages=shard-jobs -c shardInputBuckets=datacomp-pool,laion-pool -c provisionTopics=false -c brokersAdmitVpc=true"
  [shared-client-sg]="-c kafka=self-managed -c bootstrapServers=kafka-1.internal:9096 -c scramSecretArn=arn:aws:secretsmanager:eu-west-1:111122223333:secret:kafka-AbCdEf -c scramSecretKmsKeyArn=$KEY/s -c sourceTopic=crawl.pairs -c minTasks=1 $VPC -c brokerClientSecurityGroupId=sg-0cccccccccccccccc"
)

templates=()
for name in msk-sqs msk self-managed sqs-imported byo-keys shared-client-sg backfill; do
  out="cdk.out/lint-$name"
  echo "synth $name -> $out"
  # shellcheck disable=SC2086
  npx cdk synth -q -o "$out" "${COMMON[@]}" ${VARIANTS[$name]} >/dev/null
  templates+=("$out"/*.template.json)
done

echo "cfn-lint $CFN_LINT_VERSION on ${#templates[@]} templates"
# W3005 (DependsOn also implied by a GetAtt) comes from aws-cdk-lib's own Lambda/Provider constructs, not from ours.
"$VENV/bin/cfn-lint" --format parseable --ignore-checks W3005 -- "${templates[@]}"
echo "cfn-lint: ok"
