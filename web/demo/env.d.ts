/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** Envoy's gRPC-Web listener (default: this page's host, port 8080). */
  readonly VITE_HERALD_URL?: string;
}
