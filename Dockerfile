# Image for the engine, the trainer and the load generator in compose.yaml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY features features
COPY models models
COPY benchmarks benchmarks
RUN pip install --no-cache-dir .
ENV STREAMSCORE_HOME=/data
ENTRYPOINT ["streamscore"]
