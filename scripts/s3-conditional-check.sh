#!/usr/bin/env bash
# Does this S3 store honour `If-None-Match: *` (create only, never replace)
# on PUT and on CompleteMultipartUpload? Starts a Garage with
# scripts/garage.sh unless AWS_ENDPOINT_URL is set already, writes twice to
# the same keys with the header, and reports what the second write did.
# ARCHITECTURE.md ("Conditional create") quotes its output.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
    export GARAGE_DIR=${TMPDIR:-/tmp}/logferry-conditional-garage-$$
    trap 'scripts/garage.sh stop' EXIT
    garage_env=$(scripts/garage.sh start)
    eval "$garage_env"
fi
bucket=${BUCKET:-logferry}
base="$AWS_ENDPOINT_URL/$bucket/conditional-check-$$"
s3() {
    curl -sS --aws-sigv4 "aws:amz:${AWS_REGION:-us-east-1}:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}
status() { s3 -o /dev/null -w '%{http_code}' "$@"; }

# Plain PUT: the second, with the header, must be refused (412) by a store
# that honours it.
status -X PUT --data-binary first "$base/put" >/dev/null
put_status=$(status -X PUT -H 'If-None-Match: *' --data-binary second "$base/put")
put_now=$(s3 "$base/put")

# Multipart: one upload completes first; a second, on the same key and
# completed with the header, must be refused.
multipart() {
    local key=$1 content=$2 header=$3 upload etag
    upload=$(s3 -X POST "$base/$key?uploads=" | sed -n 's:.*<UploadId>\(.*\)</UploadId>.*:\1:p')
    etag=$(s3 -X PUT --data-binary "$content" -D - -o /dev/null "$base/$key?partNumber=1&uploadId=$upload" |
        tr -d '\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: *//p')
    status -X POST ${header:+-H "$header"} \
        --data-binary "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>$etag</ETag></Part></CompleteMultipartUpload>" \
        "$base/$key?uploadId=$upload"
}
multipart mp first "" >/dev/null
complete_status=$(multipart mp second 'If-None-Match: *')
complete_now=$(s3 "$base/mp")

echo "store: $AWS_ENDPOINT_URL $(garage --version 2>/dev/null || "$HOME/.cargo/bin/garage" --version 2>/dev/null || true)"
echo "| request with If-None-Match: * over an existing key | answer | object afterwards | honoured |"
echo "| --- | --- | --- | --- |"
verdict() { [ "$1" = first ] && echo yes || echo "no: replaced"; }
echo "| PutObject | $put_status | \"$put_now\" | $(verdict "$put_now") |"
echo "| CompleteMultipartUpload | $complete_status | \"$complete_now\" | $(verdict "$complete_now") |"
s3 -X DELETE "$base/put" >/dev/null
s3 -X DELETE "$base/mp" >/dev/null
