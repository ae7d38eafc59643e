"""Embeds the same texts through the clients people already run, as their docs say to use
them, against a running caxtond: over its TCP API listener with the bearer token, and over the
Unix socket where the client takes an HTTP transport. Prints one JSON object: for each client,
its vectors (or the error it raised), which tests/clients.rs compares with /v1/embeddings'.

usage: run_clients.py --url http://127.0.0.1:PORT --token TOKEN --socket PATH --model ID
       --texts JSON_LIST
"""

import argparse
import json
import sys
import traceback


def clients(url, token, socket, model):
    """(name, function of texts returning vectors) for every client and transport."""
    import httpx
    import ollama
    import openai
    from langchain_ollama import OllamaEmbeddings
    from langchain_openai import OpenAIEmbeddings
    from llama_index.embeddings.ollama import OllamaEmbedding

    auth = {"Authorization": f"Bearer {token}"}

    def ollama_embed(texts):
        client = ollama.Client(host=url, headers=auth)
        return client.embed(model=model, input=texts).embeddings

    def ollama_embeddings(texts):
        # The legacy endpoint takes one prompt a call.
        client = ollama.Client(host=url, headers=auth)
        return [client.embeddings(model=model, prompt=t).embedding for t in texts]

    def ollama_unix(texts):
        client = ollama.Client(host="http://caxton", transport=httpx.HTTPTransport(uds=socket))
        return client.embed(model=model, input=texts).embeddings

    def langchain_ollama(texts):
        e = OllamaEmbeddings(model=model, base_url=url, client_kwargs={"headers": auth})
        return e.embed_documents(texts[:-1]) + [e.embed_query(texts[-1])]

    def langchain_openai(texts):
        # As LangChain's docs say for servers other than OpenAI's: send the texts, not
        # tiktoken's token ids.
        e = OpenAIEmbeddings(model=model, base_url=f"{url}/v1", api_key=token,
                             check_embedding_ctx_length=False)
        return e.embed_documents(texts[:-1]) + [e.embed_query(texts[-1])]

    def llama_index_ollama(texts):
        e = OllamaEmbedding(model_name=model, base_url=url, client_kwargs={"headers": auth})
        return e.get_text_embedding_batch(texts[:-1]) + [e.get_query_embedding(texts[-1])]

    def openai_tcp(texts):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=token)
        answer = client.embeddings.create(model=model, input=texts)
        return [d.embedding for d in sorted(answer.data, key=lambda d: d.index)]

    def openai_unix(texts):
        http = httpx.Client(transport=httpx.HTTPTransport(uds=socket))
        client = openai.OpenAI(base_url="http://caxton/v1", api_key="unused", http_client=http)
        answer = client.embeddings.create(model=model, input=texts)
        return [d.embedding for d in sorted(answer.data, key=lambda d: d.index)]

    def openai_wrong_token(texts):
        # Must fail: the listener refuses another token.
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=token + "x", max_retries=0)
        try:
            client.embeddings.create(model=model, input=texts)
        except openai.AuthenticationError as e:
            return {"refused": e.status_code, "message": e.body.get("message") if isinstance(e.body, dict) else str(e.body)}
        return {"refused": None}

    return [
        ("ollama.embed", ollama_embed),
        ("ollama.embeddings", ollama_embeddings),
        ("ollama.embed over the Unix socket", ollama_unix),
        ("langchain_ollama.OllamaEmbeddings", langchain_ollama),
        ("langchain_openai.OpenAIEmbeddings", langchain_openai),
        ("llama_index OllamaEmbedding", llama_index_ollama),
        ("openai over TCP", openai_tcp),
        ("openai over the Unix socket", openai_unix),
        ("openai with a wrong token", openai_wrong_token),
    ]


def versions():
    import importlib.metadata as m
    names = ("ollama", "langchain-ollama", "langchain-openai", "llama-index-embeddings-ollama",
             "llama-index-core", "openai", "httpx")
    return {n: m.version(n) for n in names}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--texts", required=True)
    a = p.parse_args()
    texts = json.loads(a.texts)
    out = {"versions": versions(), "clients": {}}
    for name, run in clients(a.url, a.token, a.socket, a.model):
        try:
            result = run(texts)
            out["clients"][name] = result if isinstance(result, dict) else {"vectors": result}
        except Exception as e:  # noqa: BLE001 - each client's failure is reported by name
            out["clients"][name] = {"error": f"{type(e).__name__}: {e}",
                                    "trace": traceback.format_exc()}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
