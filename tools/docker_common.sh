# Shared by tools/check_docker.sh and tools/check_docker_cuda.sh (sourced, from the repository
# root): the request they send and the helpers that send it.
#
#   body      a file holding a greedy chat request (8 tokens) with the demo image
#   ask PORT  sends it to the server on PORT and prints the JSON answer
#   wait_ready PORT   waits up to $ready_wait seconds (120) for /ready
#   field EXPR        prints a Python expression of the JSON on standard input, bound to d

image=fixtures/images/demo_ultrasound.png
body=$(mktemp)
printf '{"model":"tiny-echovlm","max_tokens":8,"temperature":0,"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,%s"}},{"type":"text","text":"Describe the findings."}]}]}' \
    "$(base64 -w0 "$image")" > "$body"
ask() { curl -fsS -H 'content-type: application/json' -d @"$body" "http://127.0.0.1:$1/v1/chat/completions"; }
wait_ready() {
    for _ in $(seq "${ready_wait:-120}"); do
        curl -fsS "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "no answer on port $1" >&2
    return 1
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
